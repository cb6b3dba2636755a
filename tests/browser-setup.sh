#!/usr/bin/env bash
# Installs what the admin page's browser test needs (tests/tests/admin_page.rs):
# Debian's headless Chromium, NSS's tools (to give Chromium the operator's
# client certificate) and openssl (to pack it as PKCS#12), and the Chromium
# policy that picks that certificate without asking, for https://127.0.0.1
# on any port (the test's tree listens on port 0).
set -euo pipefail
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
need=()
command -v chromium >/dev/null || need+=(chromium)
command -v pk12util >/dev/null || need+=(libnss3-tools)
command -v openssl >/dev/null || need+=(openssl)
[ -e /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ] || need+=(fonts-dejavu-core)
if [ ${#need[@]} -gt 0 ]; then
    echo "browser-setup: installing ${need[*]}" >&2
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
policy=/etc/chromium/policies/managed/rsnet-tests.json
want='{"AutoSelectCertificateForUrls": ["{\"pattern\":\"https://127.0.0.1:*\",\"filter\":{}}"]}'
if [ "$(cat "$policy" 2>/dev/null)" != "$want" ]; then
    as_root mkdir -p "$(dirname "$policy")"
    echo "$want" | as_root tee "$policy" >/dev/null
fi
