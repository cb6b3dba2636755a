//! The admin page: the live tree and what moves through it, for the people
//! who run the network (`/` on the appserver, behind the operator
//! certificate like the API).
//!
//! Server-rendered HTML: the component tree (liveness, version, spool or
//! queue depth; a node's own page at `/node/ID`), groups, back-channel
//! deliveries per destination, releases per stage and destination. A
//! little JavaScript ([`SCRIPT`]) keeps it live without a reload: it
//! follows the stream (`/api/v1/stream`) into the recent-messages table
//! and, whenever an `infrastructure` message passes (a heartbeat, a stale
//! or recovered event), fetches the tree again as HTML from `/admin/tree`:
//! one renderer for the tree, here. Recent messages are drawn by the
//! script only, from the API's own JSON, first from `/api/v1/messages`
//! and then from the stream. No build step, no external asset.
//!
//! Everything shown comes from peers or operators: every text is
//! HTML-escaped, and an operator limited to customers sees only what the
//! API would show it.

use std::fmt::Write as _;

use http::{Response, StatusCode};
use rsnet_common::http_util::{text, Body};
use rsnet_common::id::ComponentId;
use rsnet_common::tls::Identity;

use crate::api::Api;
use crate::topology::{Component, Liveness};

/// How many back-channel sends the page lists.
const RECENT_SENDS: usize = 20;
/// How many releases the page lists (each with all its destinations).
const RECENT_RELEASES: usize = 10;

/// Escapes `s` for HTML text and attribute values.
fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '&' => o.push_str("&amp;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c => o.push(c),
        }
    }
    o
}

/// An HTML answer that no other site may frame, no cache keeps, and no
/// browser sniffs as anything else.
fn html(status: StatusCode, body: String) -> Response<Body> {
    let mut r = text(status, "text/html; charset=utf-8", body);
    let h = r.headers_mut();
    h.insert(
        http::header::X_FRAME_OPTIONS,
        http::HeaderValue::from_static("DENY"),
    );
    h.insert(
        http::header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-store"),
    );
    h.insert(
        http::header::X_CONTENT_TYPE_OPTIONS,
        http::HeaderValue::from_static("nosniff"),
    );
    r
}

impl Api {
    /// `GET /`, `GET /node/ID`, `GET /admin/tree`: the admin page, a
    /// node's page, the tree alone (for the script).
    pub fn admin(&self, path: &str, op: &Identity) -> Response<Body> {
        let components = self.components(op);
        if path == "/admin/tree" {
            return html(StatusCode::OK, tree(&components));
        }
        if let Some(id) = path.strip_prefix("/node/") {
            return match components.iter().find(|c| c.id == id) {
                Some(c) => html(StatusCode::OK, page(op, &node(c), Some(id))),
                None => html(
                    StatusCode::NOT_FOUND,
                    page(
                        op,
                        &format!("<p>No component {} is known.</p>", esc(id)),
                        None,
                    ),
                ),
            };
        }
        let mut body = String::new();
        let _ = write!(
            body,
            r#"<section id="components"><h2>Components</h2><div id="tree">{}</div></section>"#,
            tree(&components)
        );
        body.push_str(MESSAGES);
        body.push_str(&self.groups_section(op));
        body.push_str(&self.deliveries_section(op));
        body.push_str(&self.releases_section(op));
        html(StatusCode::OK, page(op, &body, None))
    }

    fn groups_section(&self, op: &Identity) -> String {
        let mut s = String::from(r#"<section id="groups"><h2>Groups</h2>"#);
        let groups: Vec<_> = self
            .outbound
            .groups
            .list()
            .unwrap_or_default()
            .into_iter()
            .filter(|g| {
                g.members
                    .iter()
                    .all(|m| m.parse::<ComponentId>().is_ok_and(|id| op.sees(&id)))
            })
            .collect();
        if groups.is_empty() {
            s.push_str("<p class=dim>No groups.</p>");
        } else {
            s.push_str("<table><tr><th>group</th><th>customer</th><th>members</th></tr>");
            for g in groups {
                let members: Vec<String> = g.members.iter().map(|m| node_link(m)).collect();
                let _ = write!(
                    s,
                    "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
                    esc(&g.name),
                    esc(&g.customer),
                    members.join(", ")
                );
            }
            s.push_str("</table>");
        }
        s.push_str("</section>");
        s
    }

    fn deliveries_section(&self, op: &Identity) -> String {
        let mut s = String::from(r#"<section id="deliveries"><h2>Back-channel deliveries</h2>"#);
        // An operator limited to customers sees its own destinations only
        // (a group's name is shown to operators of every customer).
        let recent = self
            .deliveries
            .recent(RECENT_SENDS, |k| match k.parse::<ComponentId>() {
                Ok(id) => op.sees(&id),
                Err(_) => op.scopes.is_empty(),
            });
        if recent.is_empty() {
            s.push_str("<p class=dim>No back-channel messages sent yet.</p>");
        }
        for d in recent {
            let counts: Vec<String> = d
                .summary()
                .iter()
                .map(|(st, n)| format!("{n} {}", state_name(st)))
                .collect();
            let _ = write!(
                s,
                r#"<details data-delivery="{id}"><summary><code>{id}</code> {class}{sub} to {to} <span class=dim>{created}</span> — {counts}</summary><table><tr><th>destination</th><th>state</th><th>via</th><th>since</th><th>reason</th></tr>"#,
                id = esc(&d.id),
                class = esc(&d.class),
                sub = d
                    .subclass
                    .as_deref()
                    .map(|x| format!("/{}", esc(x)))
                    .unwrap_or_default(),
                to = esc(&d.to.join(", ")),
                created = esc(&d.created),
                counts = esc(&counts.join(", ")),
            );
            for (dest, t) in &d.destinations {
                let st = state_name(&t.state);
                let _ = write!(
                    s,
                    r#"<tr><td>{}</td><td><span class="badge {st}">{st}</span></td><td>{}</td><td>{}</td><td>{}</td></tr>"#,
                    node_link(dest),
                    esc(t.hop.as_deref().or(t.via.as_deref()).unwrap_or("")),
                    esc(&t.at),
                    esc(t.reason.as_deref().unwrap_or("")),
                );
            }
            s.push_str("</table></details>");
        }
        s.push_str("</section>");
        s
    }

    fn releases_section(&self, op: &Identity) -> String {
        let mut s = String::from(r#"<section id="releases"><h2>Releases</h2>"#);
        // Releases span customers: the API shows them only to operators
        // for every customer, and so does the page.
        if !op.scopes.is_empty() {
            s.push_str(
                "<p class=dim>Releases are shown to operators of every customer.</p></section>",
            );
            return s;
        }
        let all = self.releases.manifests().unwrap_or_default();
        if all.is_empty() {
            s.push_str("<p class=dim>No releases published.</p>");
        }
        // Release IDs are time-ordered: the newest last.
        for r in all.iter().rev().take(RECENT_RELEASES) {
            let m = &r.manifest;
            let status = self.releases.rollout.status(&m.id);
            let _ = write!(
                s,
                r#"<details data-release="{id}"><summary><code>{id}</code> {kind} {item} {version} ({size} bytes) to {to} — {state}</summary>"#,
                id = esc(&m.id),
                kind = esc(serde_json::to_value(m.kind)
                    .ok()
                    .as_ref()
                    .and_then(|v| v.as_str())
                    .unwrap_or("")),
                item = esc(&m.item),
                version = esc(&m.version),
                size = m.size,
                to = esc(&m.target.join(", ")),
                state = esc(status["rollout"]["state"].as_str().unwrap_or("")),
            );
            s.push_str("<table><tr><th>stage</th><th>destinations</th><th>states</th></tr>");
            for st in status["rollout"]["stages"].as_array().into_iter().flatten() {
                let counts: Vec<String> = st["counts"]
                    .as_object()
                    .into_iter()
                    .flatten()
                    .map(|(k, v)| format!("{v} {k}"))
                    .collect();
                let _ = write!(
                    s,
                    "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
                    esc(st["name"].as_str().unwrap_or("")),
                    st["destinations"],
                    esc(&counts.join(", "))
                );
            }
            s.push_str("</table><table><tr><th>destination</th><th>state</th><th>since</th><th>reason</th></tr>");
            for (dest, d) in status["destinations"].as_object().into_iter().flatten() {
                let st = d["state"].as_str().unwrap_or("");
                let _ = write!(
                    s,
                    r#"<tr><td>{}</td><td><span class="badge {st}">{st}</span></td><td>{}</td><td>{}</td></tr>"#,
                    node_link(dest),
                    esc(d["updated"].as_str().unwrap_or("")),
                    esc(d["reason"].as_str().unwrap_or("")),
                    st = esc(st),
                );
            }
            s.push_str("</table></details>");
        }
        s.push_str("</section>");
        s
    }
}

fn state_name(s: &crate::deliveries::State) -> String {
    serde_json::to_value(s)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

fn node_link(id: &str) -> String {
    format!(r#"<a href="/node/{0}">{0}</a>"#, esc(id))
}

/// The component tree as nested lists, one `<li data-node=ID
/// data-liveness=…>` each, in [`rsnet_common::tree`]'s order. Support
/// instances (components that never said their role, under a proxy) are
/// counted on their proxy's line, not drawn: a node's page lists them.
fn tree(all: &[Component]) -> String {
    let role_of: std::collections::HashMap<&str, Option<&str>> = all
        .iter()
        .map(|c| (c.id.as_str(), c.role.as_deref()))
        .collect();
    let mut instances: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    let components: Vec<&Component> = all
        .iter()
        .filter(|c| {
            let under_proxy = c
                .parent_path
                .first()
                .filter(|p| role_of.get(p.as_str()) == Some(&Some("proxy")));
            match (c.role.as_deref(), under_proxy) {
                (None, Some(p)) => {
                    *instances.entry(p.as_str()).or_default() += 1;
                    false
                }
                _ => true,
            }
        })
        .collect();
    let ids: Vec<&str> = components.iter().map(|c| c.id.as_str()).collect();
    let parents: Vec<Option<&str>> = components
        .iter()
        .map(|c| c.parent_path.first().map(String::as_str))
        .collect();
    let root = components
        .iter()
        .position(|c| c.role.as_deref() == Some("appserver"));
    let rows = rsnet_common::tree::preorder(&ids, &parents, root);
    let mut s = String::from(r#"<ul class="tree">"#);
    let mut depth = 0usize;
    for (i, r) in rows.iter().enumerate() {
        if i > 0 {
            if r.depth > depth {
                s.push_str("<ul>");
            } else {
                s.push_str("</li>");
                for _ in r.depth..depth {
                    s.push_str("</ul></li>");
                }
            }
        }
        // A row deeper than one below the last opens one list only: the
        // walk never skips a level.
        depth = r.depth;
        let c = components[r.index];
        s.push_str(&component_item(c));
        if let Some(n) = instances.get(c.id.as_str()) {
            let _ = write!(
                s,
                r#" <span class="dim">{n} support instance{}</span>"#,
                if *n == 1 { "" } else { "s" }
            );
        }
    }
    if !rows.is_empty() {
        s.push_str("</li>");
        for _ in 0..depth {
            s.push_str("</ul></li>");
        }
    }
    s.push_str("</ul>");
    if components.is_empty() {
        s = "<p class=dim>No component heard yet.</p>".into();
    }
    s
}

/// One component's line in the tree.
fn component_item(c: &Component) -> String {
    let liveness = c.liveness.map_or("unknown", Liveness::as_str);
    let mut s = format!(
        r#"<li data-node="{id}" data-liveness="{liveness}"><a href="/node/{id}">{id}</a>"#,
        id = esc(&c.id)
    );
    if let Some(r) = &c.role {
        let _ = write!(s, r#" <span class="role">{}</span>"#, esc(r));
    }
    if let Some(v) = &c.version {
        let _ = write!(s, r#" <span class="version">{}</span>"#, esc(v));
    }
    if c.liveness.is_some() {
        let _ = write!(s, r#" <span class="badge {liveness}">{liveness}</span>"#);
    }
    if let Some(st) = &c.status {
        for (what, level) in [("spool", &st.spool), ("queued", &st.queues)] {
            if let Some(l) = level {
                let _ = write!(
                    s,
                    r#" <span class="depth">{what} {} msgs / {}</span>"#,
                    l.messages,
                    bytes(l.bytes)
                );
            }
        }
    }
    if c.liveness == Some(Liveness::Stale) {
        let _ = write!(
            s,
            r#" <span class="dim">since {}</span>"#,
            esc(c.liveness_since.as_deref().unwrap_or(""))
        );
    }
    s
}

fn bytes(n: u64) -> String {
    match n {
        n if n >= 1 << 30 => format!("{:.1} GiB", n as f64 / f64::from(1u32 << 30)),
        n if n >= 1 << 20 => format!("{:.1} MiB", n as f64 / f64::from(1u32 << 20)),
        n if n >= 1 << 10 => format!("{:.1} KiB", n as f64 / 1024.0),
        n => format!("{n} B"),
    }
}

/// A node's own page: what the topology holds of it, and its messages.
fn node(c: &Component) -> String {
    let mut s = format!(
        r#"<section id="node"><h2>{id}</h2><ul class="tree">{item}</li></ul><table>"#,
        id = esc(&c.id),
        item = component_item(c)
    );
    let path = if c.parent_path.is_empty() {
        "(the appserver's child)".to_string()
    } else {
        c.parent_path
            .iter()
            .map(|p| node_link(p))
            .collect::<Vec<_>>()
            .join(" › ")
    };
    for (k, v) in [
        ("parent path", path),
        ("last seen", esc(&c.last_seen)),
        (
            "last heartbeat",
            esc(c.last_heartbeat.as_deref().unwrap_or("never")),
        ),
        (
            "liveness since",
            esc(c.liveness_since.as_deref().unwrap_or("")),
        ),
    ] {
        let _ = write!(s, "<tr><th>{k}</th><td>{v}</td></tr>");
    }
    if let Some(st) = &c.status {
        let _ = write!(
            s,
            "<tr><th>uptime</th><td>{} s</td></tr><tr><th>heartbeat every</th><td>{} s</td></tr>",
            st.uptime_s, st.interval_s
        );
    }
    s.push_str("</table>");
    if let Some(st) = &c.status {
        s.push_str("<h3>Integration modules</h3>");
        if st.modules.is_empty() {
            s.push_str("<p class=dim>None.</p>");
        }
        for m in &st.modules {
            let _ = write!(
                s,
                "<h4>{}{}{}</h4><table><tr><th>support instance</th><th>key</th><th>state</th></tr>",
                esc(&m.name),
                m.id.as_ref()
                    .map(|i| format!(" <code>{}</code>", esc(i.as_str())))
                    .unwrap_or_default(),
                m.version
                    .as_deref()
                    .map(|v| format!(r#" <span class="version">{}</span>"#, esc(v)))
                    .unwrap_or_default(),
            );
            for i in &m.instances {
                let _ = write!(
                    s,
                    "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
                    node_link(i.id.as_str()),
                    esc(&i.key),
                    esc(&i.state)
                );
            }
            s.push_str("</table>");
        }
    }
    s.push_str("</section>");
    s.push_str(MESSAGES);
    s
}

/// The whole page around `body`; `node` filters the messages to one source.
fn page(op: &Identity, body: &str, node: Option<&str>) -> String {
    format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>rsnet{title}</title><style>{STYLE}</style></head>
<body data-node="{node}"><header><a href="/"><b>rsnet</b></a> <span class="version">{version}</span>
<nav><a href="/#components">components</a> <a href="/#messages">messages</a> <a href="/#groups">groups</a> <a href="/#deliveries">deliveries</a> <a href="/#releases">releases</a></nav>
<span class="dim">operator {op}</span> <span id="live" class="badge unknown">connecting</span></header>
<main>{body}</main><script>{SCRIPT}</script></body></html>"#,
        title = node.map(|n| format!(" · {}", esc(n))).unwrap_or_default(),
        node = esc(node.unwrap_or("")),
        version = esc(rsnet_common::VERSION),
        op = esc(op.id.as_str()),
    )
}

/// The recent-messages section; rows come from the script.
const MESSAGES: &str = r#"<section id="messages"><h2>Recent messages</h2>
<form id="filter"><input name="class" placeholder="class"> <input name="subclass" placeholder="subclass"> <input name="source" placeholder="source (and below)"> <button>filter</button></form>
<table><thead><tr><th>seq</th><th>received</th><th>source</th><th>class</th><th>severity</th><th>text</th></tr></thead><tbody></tbody></table></section>"#;

const STYLE: &str = r#"
body{font:14px/1.4 system-ui,sans-serif;margin:0;color:#1d2330;background:#f6f7f9}
header{display:flex;gap:1em;align-items:center;padding:.6em 1em;background:#1d2330;color:#fff}
header a{color:#fff;text-decoration:none} nav a{margin-right:.8em;color:#c9d1e0}
main{padding:0 1em 2em} section{background:#fff;border:1px solid #e1e4ea;border-radius:6px;margin:1em 0;padding:.4em 1em 1em}
h2{font-size:1.1em} table{border-collapse:collapse;width:100%;margin:.4em 0} th,td{text-align:left;padding:.2em .5em;border-bottom:1px solid #eef0f3;vertical-align:top}
th{font-weight:600;color:#4a5366} td{font-family:ui-monospace,monospace;font-size:12.5px}
.tree,.tree ul{list-style:none;margin:0;padding-left:1.2em} .tree>li{padding-left:0} .tree li{padding:.15em 0;border-left:1px dotted #c5cad3;padding-left:.6em}
.tree a{font-weight:600;color:#1d2330} .role{color:#4a5366} .version{color:#6b7385;font-family:ui-monospace,monospace;font-size:12px}
.depth{color:#4a5366;font-size:12px} .dim{color:#8a91a0}
.badge{display:inline-block;padding:0 .5em;border-radius:9px;font-size:12px;font-weight:600;background:#e1e4ea}
.badge.alive,.badge.processed,.badge.delivered,.badge.applied{background:#d6f5df;color:#17693a}
.badge.stale,.badge.failed,.badge.expired,.badge.rejected{background:#fde0e0;color:#a11c1c}
.badge.queued,.badge.in-flight,.badge.offered,.badge.fetching{background:#fff1cc;color:#7a5a00}
tr.stale td{background:#fff3f3} input{font:inherit;padding:.2em .4em} details{margin:.3em 0}
"#;

/// Follows the stream: messages into the table, and the tree fetched
/// again (at most once a second) whenever an `infrastructure` message
/// passes. Data goes into the page as text, never as markup.
const SCRIPT: &str = r#"
(function () {
  const $ = (s) => document.querySelector(s);
  const live = $('#live');
  const rows = $('#messages tbody');
  const node = document.body.dataset.node;
  const url = new URLSearchParams(location.search);
  const filter = new URLSearchParams();
  for (const k of ['class', 'subclass', 'source']) {
    const v = url.get(k) || (k === 'source' && node) || '';
    if (v) filter.set(k, v);
    const input = document.querySelector('#filter [name="' + k + '"]');
    if (input) input.value = url.get(k) || '';
  }
  function cell(tr, t) { const td = document.createElement('td'); td.textContent = t == null ? '' : String(t); tr.appendChild(td); }
  function add(m) {
    if (!rows) return;
    const tr = document.createElement('tr');
    tr.dataset.seq = m.seq;
    const c = m.content || {};
    const text = c.text != null ? c.text : (c.mime ? '[' + c.mime + ', ' + c.size + ' bytes]' : '');
    cell(tr, m.seq); cell(tr, (m.received || m.created || '').replace('T', ' ').replace('Z', ''));
    cell(tr, m.source); cell(tr, m.class + (m.subclass ? '/' + m.subclass : ''));
    cell(tr, c.severity); cell(tr, text);
    if (m.class === 'infrastructure' && m.subclass === 'stale') tr.className = 'stale';
    rows.insertBefore(tr, rows.firstChild);
    while (rows.children.length > 100) rows.removeChild(rows.lastChild);
  }
  let pending = null;
  function refreshTree() {
    const tree = $('#tree');
    if (!tree || pending) return;
    pending = setTimeout(async () => {
      try {
        const r = await fetch('/admin/tree');
        if (r.ok) tree.innerHTML = await r.text();
      } finally { pending = null; }
    }, 1000);
  }
  function follow(query, on) {
    const es = new EventSource('/api/v1/stream?' + query);
    es.onopen = () => { live.textContent = 'live'; live.className = 'badge alive'; };
    es.onerror = () => { live.textContent = 'reconnecting'; live.className = 'badge stale'; };
    es.onmessage = (e) => { try { on(JSON.parse(e.data)); } catch (_) {} };
  }
  async function start() {
    const first = await (await fetch('/api/v1/messages?limit=1')).json();
    let after = Math.max(0, (first.last || 0) - 5000);
    let recent = [];
    for (let i = 0; i < 10; i++) {
      const q = new URLSearchParams(filter); q.set('after', after); q.set('limit', 1000);
      const page = await (await fetch('/api/v1/messages?' + q)).json();
      recent = recent.concat(page.messages || []).slice(-50);
      if (page.next === after || page.next >= page.last) { after = page.next; break; }
      after = page.next;
    }
    recent.forEach(add);
    const q = new URLSearchParams(filter); q.set('after', after);
    follow(q.toString(), add);
    follow('class=infrastructure&after=' + after, refreshTree);
  }
  start().catch((e) => { live.textContent = 'error: ' + e; live.className = 'badge stale'; });
})();
"#;

#[cfg(test)]
mod tests {
    use super::*;

    fn component(id: &str, parent: Option<&str>, role: &str) -> Component {
        let v = serde_json::json!({
            "id": id,
            "parent_path": parent.into_iter().collect::<Vec<_>>(),
            "last_seen": "2026-12-05T00:00:00.000Z",
            "last_heartbeat": null,
            "role": role,
            "version": "0.1.0 <b>",
            "liveness": "stale",
            "liveness_since": "2026-12-05T00:00:01.000Z",
        });
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn the_tree_nests_and_closes_every_list_and_escapes_what_peers_sent() {
        let list = vec![
            component("provider.app", None, "appserver"),
            component("acme.mlm1", None, "mlm"),
            component("acme.p1", Some("acme.mlm1"), "proxy"),
            component("acme.p1.si1", Some("acme.p1"), "<script>"),
            component("acme.p2", None, "proxy"),
        ];
        let t = tree(&list);
        assert_eq!(t.matches("<ul").count(), t.matches("</ul>").count(), "{t}");
        assert_eq!(t.matches("<li").count(), t.matches("</li>").count(), "{t}");
        assert!(
            !t.contains("<script>") && t.contains("&lt;script&gt;"),
            "{t}"
        );
        assert!(t.contains("0.1.0 &lt;b&gt;"), "{t}");
        assert!(
            t.contains(r#"data-node="acme.p1" data-liveness="stale""#),
            "{t}"
        );
        // p1's list item holds si1's list: nested, not a sibling.
        let p1 = t.find(r#"data-node="acme.p1""#).unwrap();
        let si1 = t.find(r#"data-node="acme.p1.si1""#).unwrap();
        assert!(
            t[p1..si1].contains("<ul>") && !t[p1..si1].contains("</li>"),
            "{t}"
        );
    }
}
