//! Rules, declared, not coded (DESIGN.md §8): an ordered list in a node's
//! config that decides what becomes of the messages passing through.
//!
//! ```toml
//! [[rule]]
//! name = "drop-disk-noise"
//! action = "filter"                 # drop: answered "accepted", counted
//! [rule.match]                      # every field given must match
//! class = "alarm"
//! subclass = "disk"
//! source = "acme.p*"                # an ID (its subtree), or a prefix with `*`
//! severity = ["clear", "info"]      # alarms only
//! kind = "alarm"                    # alarm, event, data, …
//! ```
//!
//! The first rule that matches a message decides. Built today: the
//! `filter` action, on forward messages, at an MLM (this stage) and at a
//! proxy before it spools an integrator's message ([`Rules::filters`]).
//! **Not built yet**: `modify` and `aggregate` (refused at load), rules on
//! the back-channel, reloading without a restart, rules from a `config`
//! release.

use serde::Deserialize;

use crate::envelope::Item;
use crate::id::ComponentId;
use crate::metrics::{Counter, Registry};
use crate::model::{Content, ContentKind, Direction, Severity};

use super::{Exchange, Judged, Stage, StageFuture, Verdict};

/// One `[[rule]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    /// Its name (metrics and logs).
    pub name: String,
    /// `filter` (built); `modify`, `aggregate` (not built yet).
    pub action: String,
    /// What it matches; empty matches everything.
    #[serde(default, rename = "match")]
    pub matches: MatchConfig,
}

/// `[rule.match]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MatchConfig {
    /// Class.
    pub class: Option<String>,
    /// Subclass.
    pub subclass: Option<String>,
    /// An ID (and its subtree), or a prefix ending in `*`.
    pub source: Option<String>,
    /// Alarm severities.
    pub severity: Option<Vec<String>>,
    /// Content kind.
    pub kind: Option<String>,
}

enum Source {
    Within(ComponentId),
    Prefix(String),
}

struct Rule {
    name: String,
    class: Option<String>,
    subclass: Option<String>,
    source: Option<Source>,
    severity: Option<Vec<Severity>>,
    kind: Option<ContentKind>,
    hits: Counter,
}

/// Checks `rules` (with their place in the list) and adds every problem to
/// `errors`, naming the rule.
pub fn validate(rules: &[RuleConfig], errors: &mut Vec<String>) {
    let mut names = std::collections::HashSet::new();
    for (i, r) in rules.iter().enumerate() {
        let at = format!("rule[{i}] ({:?})", r.name);
        if r.name.is_empty() || !names.insert(r.name.as_str()) {
            errors.push(format!("{at}: name must be given and unique"));
        }
        match r.action.as_str() {
            "filter" => {}
            "modify" | "aggregate" => errors.push(format!(
                "{at}: action {:?} is not built yet (only filter)",
                r.action
            )),
            other => errors.push(format!("{at}: action {other:?} (expected filter)")),
        }
        let m = &r.matches;
        for (k, v) in [("class", &m.class), ("subclass", &m.subclass)] {
            if v.as_ref().is_some_and(|c| !crate::model::valid_class(c)) {
                errors.push(format!("{at}: match.{k}: not a class label"));
            }
        }
        if let Some(s) = &m.source {
            if parse_source(s).is_none() {
                errors.push(format!(
                    "{at}: match.source: {s:?} is neither an ID nor a prefix ending in *"
                ));
            }
        }
        for s in m.severity.iter().flatten() {
            if parse_severity(s).is_none() {
                errors.push(format!(
                    "{at}: match.severity: {s:?} (clear, info, warning, minor, major, critical)"
                ));
            }
        }
        if let Some(k) = &m.kind {
            if ContentKind::parse(k).is_none() {
                errors.push(format!("{at}: match.kind: {k:?} is not a content kind"));
            }
        }
    }
}

fn parse_source(s: &str) -> Option<Source> {
    match s.strip_suffix('*') {
        Some(p) if !p.is_empty() && !p.contains('*') => Some(Source::Prefix(p.to_string())),
        Some(_) => None,
        None => s.parse().ok().map(Source::Within),
    }
}

fn parse_severity(s: &str) -> Option<Severity> {
    serde_json::from_value(serde_json::json!(s)).ok()
}

/// The rules stage: see the module docs.
pub struct Rules {
    rules: Vec<Rule>,
}

impl Rules {
    /// The stage for validated `rules` ([`validate`]); a rule that does not
    /// parse is left out.
    pub fn new(rules: &[RuleConfig], metrics: &Registry) -> Rules {
        Rules {
            rules: rules
                .iter()
                .filter(|r| r.action == "filter")
                .map(|r| Rule {
                    name: r.name.clone(),
                    class: r.matches.class.clone(),
                    subclass: r.matches.subclass.clone(),
                    source: r.matches.source.as_deref().and_then(parse_source),
                    severity: r
                        .matches
                        .severity
                        .as_ref()
                        .map(|v| v.iter().filter_map(|s| parse_severity(s)).collect()),
                    kind: r.matches.kind.as_deref().and_then(ContentKind::parse),
                    hits: metrics.counter(
                        "rsnet_rules_filtered_total",
                        "messages filter rules dropped (all rules)",
                    ),
                })
                .collect(),
        }
    }

    /// True if a filter rule drops `item` (and counts it): what a proxy
    /// asks before it spools an integrator's message.
    pub fn filters(&self, item: &Item) -> bool {
        match self.matching(item) {
            Some(r) => {
                r.hits.inc();
                true
            }
            None => false,
        }
    }

    fn matching(&self, item: &Item) -> Option<&Rule> {
        let h = &item.header;
        let Direction::Source(src) = &h.direction else {
            return None;
        };
        self.rules.iter().find(|r| {
            r.class.as_ref().is_none_or(|c| *c == h.class)
                && r.subclass.as_ref().is_none_or(|s| h.subclass.as_ref() == Some(s))
                && r.kind.is_none_or(|k| k == h.kind)
                && r.source.as_ref().is_none_or(|s| match s {
                    Source::Within(id) => src.origin.is_within(id),
                    Source::Prefix(p) => src.origin.as_str().starts_with(p.as_str()),
                })
                && r.severity.as_ref().is_none_or(|want| {
                    matches!(item.content(), Ok(Content::Alarm(a)) if want.contains(&a.severity))
                })
        })
    }
}

impl Stage for Rules {
    fn name(&self) -> &'static str {
        "rules"
    }

    fn judge<'a>(&'a self, _ex: &'a Exchange, items: Vec<Item>) -> StageFuture<'a> {
        let j = Judged::each(items, |item| {
            let r = self.matching(item)?;
            r.hits.inc();
            tracing::debug!(message = %item.header.id, rule = %r.name, "filtered");
            Some(Verdict::Drop)
        });
        Box::pin(async move { j })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::test_item as item;
    use crate::model::Timestamp;
    use crate::tls::{Identity, Role};

    fn rules(toml_text: &str) -> Vec<RuleConfig> {
        #[derive(Deserialize)]
        struct F {
            rule: Vec<RuleConfig>,
        }
        toml::from_str::<F>(toml_text).unwrap().rule
    }

    fn ex() -> Exchange {
        Exchange {
            peer: Identity {
                id: "acme.mlm1".parse().unwrap(),
                role: Role::Mlm,
                scopes: vec![],
            },
            received: Timestamp::now(),
            persist: Vec::new(),
        }
    }

    #[tokio::test]
    async fn a_filter_rule_drops_what_it_matches_and_nothing_else() {
        let r = rules(
            "[[rule]]\nname = \"noise\"\naction = \"filter\"\n[rule.match]\nclass = \"event\"\nsubclass = \"noise\"\nsource = \"acme.p1\"\n",
        );
        let mut e = Vec::new();
        validate(&r, &mut e);
        assert!(e.is_empty(), "{e:?}");
        let stage = Rules::new(&r, &Registry::default());
        let mut noise = item("acme.p1.si3", &["acme.p1"]);
        noise.header.class = "event".into();
        noise.header.subclass = Some("noise".into());
        let mut other_source = noise.clone();
        other_source.header.direction = Direction::Source(crate::model::Source {
            origin: "acme.p2".parse().unwrap(),
            version: None,
        });
        let mut other_subclass = noise.clone();
        other_subclass.header.subclass = Some("disk".into());
        let j = stage
            .judge(&ex(), vec![noise, other_source, other_subclass])
            .await;
        assert_eq!(j.decided.len(), 1);
        assert_eq!(j.decided[0].1, Verdict::Drop);
        assert_eq!(j.forward.len(), 2);
    }

    #[test]
    fn a_prefix_matches_by_text_and_an_id_by_subtree() {
        assert!(matches!(parse_source("acme.p*"), Some(Source::Prefix(p)) if p == "acme.p"));
        assert!(matches!(parse_source("acme.p1"), Some(Source::Within(_))));
        assert!(parse_source("*").is_none());
        assert!(parse_source("a*b*").is_none());
    }

    #[test]
    fn bad_rules_are_refused_with_the_rule_named() {
        let r = rules(
            "[[rule]]\nname = \"a\"\naction = \"aggregate\"\n[[rule]]\nname = \"a\"\naction = \"explode\"\n[rule.match]\nseverity = [\"loud\"]\nsource = \"**\"\nkind = \"tweet\"\nclass = \"Bad\"\n",
        );
        let mut e = Vec::new();
        validate(&r, &mut e);
        let all = e.join("\n");
        for needle in [
            "rule[0] (\"a\"): action \"aggregate\" is not built yet",
            "rule[1] (\"a\"): name must be given and unique",
            "action \"explode\"",
            "match.severity: \"loud\"",
            "match.source",
            "match.kind",
            "match.class",
        ] {
            assert!(all.contains(needle), "{needle}: {all}");
        }
    }
}
