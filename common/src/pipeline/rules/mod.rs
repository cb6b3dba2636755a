//! Rules, declared, not coded (DESIGN.md §8): an ordered list that decides
//! what becomes of the messages passing a node.
//!
//! ```toml
//! [[rule]]
//! name = "drop-disk-noise"
//! action = "filter"                 # filter | modify | aggregate
//! applies = "forward"               # forward (default) | back | both
//! [rule.match]                      # every field given must match
//! class = "alarm"
//! subclass = "disk"
//! source = "acme.p*"                # an ID (its subtree), or a prefix with `*`
//! severity = ["clear", "info"]      # alarms only
//! kind = "alarm"                    # alarm, event, data, …
//! support_instance = "acme.p1.si3"  # alarms and events; ID or prefix*
//! text = "link down"                # the alarm's or event's text contains it
//! ```
//!
//! The first rule that matches a message decides:
//!
//! * `filter` drops it; the sender hears "accepted" and it is counted.
//! * `modify` changes it and passes it on ([`modify`]).
//! * `aggregate` holds it durably; one message replaces a group after a
//!   count or a time window ([`aggregate`], MLM only).
//!
//! Rules live in the node's config (`[[rule]]`) or in the file its
//! `rules_file` names. They are checked at load, and every problem names
//! the file and line ([`config`]). [`Rules::watch`] reads them again on
//! SIGHUP and when the file changes; a list with a mistake is refused and
//! the rules in force stay. Each rule's matches are counted in
//! `rsnet_rule_matches_total{rule,action}`.
//!
//! Where they run: at an MLM as a pipeline stage on forward messages
//! ([`Stage`]) and on back-channel messages from its parent
//! ([`Rules::back`], rules that say `applies = "back"` or `"both"`); at a
//! proxy on what integrators send, before it is spooled ([`Rules::local`]).
//! **Not built yet**: rules arriving as a release of kind `config`.

pub mod aggregate;
pub mod config;
mod modify;

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use crate::envelope::wire::decode_content;
use crate::envelope::Item;
use crate::id::ComponentId;
use crate::metrics::{Counter, Registry};
use crate::model::{Content, ContentKind, Direction, Header, Message, Severity, Timestamp};
use crate::server::Shutdown;

pub use aggregate::{AggregateConfig, Aggregator};
pub use config::{
    check_config, load, load_text, MatchConfig, NodeKind, RuleConfig, RuleSource, RulesError,
    SetConfig,
};

use super::{Exchange, Judged, Stage, StageFuture, Verdict};

/// How often a watched rules file is looked at for changes.
pub const POLL: Duration = Duration::from_secs(1);
/// What a sender is told to wait when the aggregate store failed.
const STORE_RETRY: Duration = Duration::from_secs(1);

enum Pattern {
    Within(ComponentId),
    Prefix(String),
}

impl Pattern {
    fn parse(s: &str) -> Option<Pattern> {
        if !config::valid_pattern(s) {
            return None;
        }
        match s.strip_suffix('*') {
            Some(p) => Some(Pattern::Prefix(p.to_string())),
            None => s.parse().ok().map(Pattern::Within),
        }
    }
    fn matches(&self, id: &ComponentId) -> bool {
        match self {
            Pattern::Within(scope) => id.is_within(scope),
            Pattern::Prefix(p) => id.as_str().starts_with(p.as_str()),
        }
    }
}

/// A message as the rules look at it: its content is decoded at most once,
/// however many rules ask.
struct Look<'a> {
    header: &'a Header,
    raw: &'a [u8],
    decoded: Option<Option<Content>>,
}

impl<'a> Look<'a> {
    fn item(item: &'a Item) -> Self {
        Look {
            header: &item.header,
            raw: &item.content,
            decoded: None,
        }
    }
    fn content(&mut self) -> Option<&Content> {
        if self.decoded.is_none() {
            self.decoded = Some(decode_content(self.raw, self.header.kind).ok());
        }
        self.decoded.as_ref().and_then(Option::as_ref)
    }
}

fn instance_and_text(c: Option<&Content>) -> (Option<&ComponentId>, Option<&str>) {
    match c {
        Some(Content::Alarm(a)) => (a.support_instance.as_ref(), Some(&a.text)),
        Some(Content::Event(e)) => (e.support_instance.as_ref(), Some(&e.text)),
        _ => (None, None),
    }
}

struct Matcher {
    class: Option<String>,
    subclass: Option<String>,
    source: Option<Pattern>,
    severity: Option<Vec<Severity>>,
    kind: Option<ContentKind>,
    support_instance: Option<Pattern>,
    text: Option<String>,
}

impl Matcher {
    fn new(m: &MatchConfig) -> Matcher {
        Matcher {
            class: m.class.clone(),
            subclass: m.subclass.clone(),
            source: m.source.as_deref().and_then(Pattern::parse),
            severity: m
                .severity
                .as_ref()
                .map(|v| v.iter().filter_map(|s| config::parse_severity(s)).collect()),
            kind: m.kind.as_deref().and_then(ContentKind::parse),
            support_instance: m.support_instance.as_deref().and_then(Pattern::parse),
            text: m.text.clone(),
        }
    }

    fn matches(&self, look: &mut Look<'_>) -> bool {
        let h = look.header;
        let header_ok = self.class.as_ref().is_none_or(|c| *c == h.class)
            && self
                .subclass
                .as_ref()
                .is_none_or(|s| h.subclass.as_ref() == Some(s))
            && self.kind.is_none_or(|k| k == h.kind)
            && self.source.as_ref().is_none_or(|p| match &h.direction {
                Direction::Source(s) => p.matches(&s.origin),
                Direction::Destination(_) => false,
            });
        if !header_ok {
            return false;
        }
        if self.severity.is_none() && self.support_instance.is_none() && self.text.is_none() {
            return true;
        }
        let c = look.content();
        let severity_ok = self
            .severity
            .as_ref()
            .is_none_or(|want| matches!(c, Some(Content::Alarm(a)) if want.contains(&a.severity)));
        let (si, text) = instance_and_text(c);
        severity_ok
            && self
                .support_instance
                .as_ref()
                .is_none_or(|p| si.is_some_and(|s| p.matches(s)))
            && self
                .text
                .as_ref()
                .is_none_or(|t| text.is_some_and(|x| x.contains(t.as_str())))
    }
}

enum Action {
    Filter,
    Modify(modify::Modify),
    Aggregate(aggregate::Spec),
}

struct Rule {
    name: String,
    matcher: Matcher,
    action: Action,
    forward: bool,
    back: bool,
    hits: Counter,
}

/// A compiled list of rules; replaced whole on reload.
struct RuleSet {
    rules: Vec<Rule>,
}

impl RuleSet {
    fn compile(cfgs: &[RuleConfig], metrics: &Registry) -> RuleSet {
        let rules = cfgs
            .iter()
            .filter_map(|r| {
                let action = match r.action.as_str() {
                    "filter" => Action::Filter,
                    "modify" => Action::Modify(modify::Modify::new(r)),
                    "aggregate" => Action::Aggregate(r.aggregate.as_ref()?.spec()),
                    _ => return None,
                };
                let (forward, back) = match r.applies.as_deref() {
                    Some("back") => (false, true),
                    Some("both") => (true, true),
                    _ => (true, false),
                };
                Some(Rule {
                    name: r.name.clone(),
                    matcher: Matcher::new(&r.matches),
                    hits: metrics.counter_with(
                        "rsnet_rule_matches_total",
                        &[("rule", &r.name), ("action", &r.action)],
                        "messages each rule matched (and acted on)",
                    ),
                    action,
                    forward,
                    back,
                })
            })
            .collect();
        RuleSet { rules }
    }

    /// The first rule for this direction that matches. Aggregates fold
    /// alarms and events only: other kinds go on to the next rule.
    fn first<'s>(&'s self, look: &mut Look<'_>, back: bool) -> Option<&'s Rule> {
        self.rules.iter().find(|r| {
            (if back { r.back } else { r.forward })
                && (!matches!(r.action, Action::Aggregate(_))
                    || matches!(look.header.kind, ContentKind::Alarm | ContentKind::Event))
                && r.matcher.matches(look)
        })
    }

    /// True if some rule looks at messages going this way.
    fn any(&self, back: bool) -> bool {
        self.rules
            .iter()
            .any(|r| if back { r.back } else { r.forward })
    }

    fn specs(&self) -> HashMap<String, aggregate::Spec> {
        self.rules
            .iter()
            .filter_map(|r| match &r.action {
                Action::Aggregate(s) => Some((r.name.clone(), s.clone())),
                _ => None,
            })
            .collect()
    }
}

/// What the rules decided for one item.
enum Decision {
    /// No rule matched: it goes on as it was.
    Pass,
    /// A modify rule changed it in place: it goes on.
    Modified,
    /// A filter rule dropped it.
    Filter,
    /// An aggregate rule holds it, in this group.
    Hold(String, Vec<(String, String)>),
}

/// A node's rules: the list in force, where it comes from, and (at an MLM)
/// the aggregates' holding area. See the module docs.
pub struct Rules {
    node: NodeKind,
    source: RuleSource,
    metrics: Registry,
    set: RwLock<Arc<RuleSet>>,
    aggregator: Option<Arc<Aggregator>>,
    c: Counters,
}

struct Counters {
    filtered: Counter,
    modified: Counter,
    reloads: Counter,
    refused: Counter,
}

impl Rules {
    /// Loads the rules of `source` for a `node`. An MLM passes its
    /// [`Aggregator`]; without one, aggregate rules are refused.
    ///
    /// # Errors
    /// Every problem of the list, naming file and line.
    pub fn open(
        source: RuleSource,
        node: NodeKind,
        aggregator: Option<Arc<Aggregator>>,
        metrics: &Registry,
    ) -> Result<Arc<Rules>, RulesError> {
        let cfgs = load(&source, node)?;
        let set = RuleSet::compile(&cfgs, metrics);
        if let Some(a) = &aggregator {
            a.set_specs(set.specs());
        }
        let r = Rules {
            node,
            source,
            metrics: metrics.clone(),
            set: RwLock::new(Arc::new(set)),
            aggregator,
            c: Counters {
                filtered: metrics.counter(
                    "rsnet_rules_filtered_total",
                    "messages filter rules dropped (all rules)",
                ),
                modified: metrics.counter(
                    "rsnet_rules_modified_total",
                    "messages modify rules changed (all rules)",
                ),
                reloads: metrics.counter(
                    "rsnet_rules_reloads_total",
                    "rule lists loaded again and put in force",
                ),
                refused: metrics.counter(
                    "rsnet_rules_reloads_refused_total",
                    "rule lists refused on reload (the previous stayed in force)",
                ),
            },
        };
        let r = Arc::new(r);
        let weak = Arc::downgrade(&r);
        metrics.gauge("rsnet_rules_in_force", "rules in force now", move || {
            weak.upgrade()
                .map_or(f64::NAN, |r| r.current().rules.len() as f64)
        });
        Ok(r)
    }

    fn current(&self) -> Arc<RuleSet> {
        match self.set.read() {
            Ok(s) => s.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// Reads the rules again. A list with a mistake is refused and the
    /// rules in force stay. Returns how many rules are now in force.
    ///
    /// # Errors
    /// Every problem of the refused list.
    pub fn reload(&self) -> Result<usize, RulesError> {
        let cfgs = match load(&self.source, self.node) {
            Ok(c) => c,
            Err(e) => {
                self.c.refused.inc();
                return Err(e);
            }
        };
        let set = RuleSet::compile(&cfgs, &self.metrics);
        let n = set.rules.len();
        if let Some(a) = &self.aggregator {
            a.set_specs(set.specs());
        }
        match self.set.write() {
            Ok(mut s) => *s = Arc::new(set),
            Err(p) => *p.into_inner() = Arc::new(set),
        }
        self.c.reloads.inc();
        Ok(n)
    }

    /// Puts `text` in force as the new rules file (a `config` release at
    /// an MLM): checked first, then written over the rules file (aside and
    /// renamed, so a crash leaves the old file or the new one) and loaded.
    /// Returns how many rules are now in force.
    ///
    /// # Errors
    /// The rules come from the node's config, not a rules file; the text
    /// has mistakes (nothing is written); the file cannot be written.
    pub fn install(&self, text: &str) -> Result<usize, RulesError> {
        let one = |p: String| RulesError { problems: vec![p] };
        let RuleSource::File(path) = &self.source else {
            return Err(one(
                "rules are given in the node's config; set rules_file to take rules from a release"
                    .into(),
            ));
        };
        load_text(&self.source, path, text, self.node)?;
        let tmp = path.with_extension("new");
        let write = || -> std::io::Result<()> {
            use std::io::Write;
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(text.as_bytes())?;
            f.sync_all()?;
            std::fs::rename(&tmp, path)?;
            if let Some(dir) = path.parent() {
                std::fs::File::open(dir)?.sync_all()?;
            }
            Ok(())
        };
        write().map_err(|e| one(format!("{}: {e}", path.display())))?;
        self.reload()
    }

    fn reload_logged(&self, why: &str) {
        match self.reload() {
            Ok(n) => tracing::info!(rules = n, why, "rules reloaded"),
            Err(e) => tracing::error!(
                why,
                error = %e,
                "rules refused; the previous rules stay in force"
            ),
        }
    }

    /// Reloads on SIGHUP, and when the rules' file changes (looked at
    /// every [`POLL`]), until `shutdown`.
    pub async fn watch(self: Arc<Self>, mut shutdown: Shutdown) {
        let path = self.source.path().map(Path::to_path_buf);
        let read = |p: &Option<std::path::PathBuf>| p.as_ref().and_then(|p| std::fs::read(p).ok());
        let mut last = read(&path);
        #[cfg(unix)]
        let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
        loop {
            #[cfg(unix)]
            let hangup = async {
                match hup.as_mut() {
                    Some(h) => {
                        h.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            #[cfg(not(unix))]
            let hangup = std::future::pending::<()>();
            tokio::select! {
                _ = shutdown.wait() => return,
                _ = hangup => {
                    last = read(&path);
                    self.reload_logged("SIGHUP");
                }
                _ = tokio::time::sleep(POLL), if path.is_some() => {
                    let now = read(&path);
                    if now != last {
                        last = now;
                        self.reload_logged("file changed");
                    }
                }
            }
        }
    }

    fn decide(&self, set: &RuleSet, item: &mut Item, back: bool, now: Timestamp) -> Decision {
        let mut look = Look::item(item);
        let Some(rule) = set.first(&mut look, back) else {
            return Decision::Pass;
        };
        rule.hits.inc();
        match &rule.action {
            Action::Filter => {
                self.c.filtered.inc();
                tracing::debug!(message = %item.header.id, rule = %rule.name, "filtered");
                Decision::Filter
            }
            Action::Modify(m) => {
                let content = look
                    .decoded
                    .take()
                    .flatten()
                    .or_else(|| m.touches_content().then(|| item.content().ok()).flatten());
                m.item(item, content.as_ref(), now);
                self.c.modified.inc();
                Decision::Modified
            }
            Action::Aggregate(spec) => {
                let key = spec.key(item, look.content());
                Decision::Hold(rule.name.clone(), key)
            }
        }
    }

    /// A proxy's rules on a message an integrator sent: `None` if a filter
    /// rule drops it, else the message as it is to be spooled.
    pub fn local(&self, m: Message) -> Option<Message> {
        let set = self.current();
        if !set.any(false) {
            // No rule to apply: spare the content's encoding for the look.
            return Some(m);
        }
        let mut item = Item::new(&m);
        match self.decide(&set, &mut item, false, Timestamp::now()) {
            Decision::Filter => None,
            Decision::Pass => Some(m),
            Decision::Modified => item.message().ok().or(Some(m)),
            // Refused at load for a proxy; passes unchanged if it ever got here.
            Decision::Hold(..) => Some(m),
        }
    }

    /// An MLM's back-channel rules on a message from its parent: `None` if
    /// a filter rule drops it, else the item as it is to be queued below.
    pub fn back(&self, mut item: Item) -> Option<Item> {
        match self.decide(&self.current(), &mut item, true, Timestamp::now()) {
            Decision::Filter => None,
            _ => Some(item),
        }
    }
}

impl Stage for Rules {
    fn name(&self) -> &'static str {
        "rules"
    }

    fn judge<'a>(&'a self, ex: &'a Exchange, items: Vec<Item>) -> StageFuture<'a> {
        Box::pin(async move {
            let set = self.current();
            let mut j = Judged {
                forward: Vec::with_capacity(items.len()),
                decided: Vec::new(),
            };
            let mut hold = Vec::new();
            for mut item in items {
                match self.decide(&set, &mut item, false, ex.received) {
                    Decision::Pass | Decision::Modified => j.forward.push(item),
                    Decision::Filter => j.decided.push((item.header.id, Verdict::Drop)),
                    Decision::Hold(rule, key) => hold.push((rule, key, item)),
                }
            }
            if hold.is_empty() {
                return j;
            }
            let Some(a) = &self.aggregator else {
                j.forward.extend(hold.into_iter().map(|(_, _, i)| i));
                return j;
            };
            let ids: Vec<_> = hold.iter().map(|(_, _, i)| i.header.id).collect();
            let v = match a.hold(hold, ex.received).await {
                Ok(()) => Verdict::Absorb { correlation: None },
                Err(e @ crate::store::StoreError::Full { .. }) => {
                    tracing::warn!(error = %e, "aggregate holding area full; sender retries");
                    Verdict::defer(
                        format!("aggregate holding area full: {e}"),
                        aggregate::FULL_RETRY,
                    )
                }
                Err(e) => {
                    tracing::warn!(error = %e, "messages not held for aggregation; sender retries");
                    Verdict::defer(format!("aggregate store: {e}"), STORE_RETRY)
                }
            };
            j.decided.extend(ids.into_iter().map(|id| (id, v.clone())));
            j
        })
    }
}

#[cfg(test)]
mod tests;
