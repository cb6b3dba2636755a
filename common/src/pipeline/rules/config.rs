//! Rules as written: the `[[rule]]` tables, where they come from, and the
//! checks that refuse a bad list before it can replace a good one.
//!
//! Every problem names the file and the line of the rule it is in
//! (`rules.toml:12: rule "noise": action "explode" …`), so an operator who
//! edits a rules file on a running node sees at once why it was refused.

use std::collections::HashSet;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

use crate::limits::MAX_TEXT_BYTES;
use crate::model::{valid_class, ContentKind};

use super::aggregate::{AggregateConfig, KeyField};

/// One `[[rule]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    /// Its name (metrics, logs, the aggregates it makes). Unique in a list.
    pub name: String,
    /// `filter`, `modify` or `aggregate`.
    pub action: String,
    /// What it matches; empty matches everything.
    #[serde(default, rename = "match")]
    pub matches: MatchConfig,
    /// Which way it applies: `forward` (the default), `back` (back-channel
    /// messages passing an MLM) or `both`.
    #[serde(default)]
    pub applies: Option<String>,
    /// `modify`: fields to set.
    #[serde(default)]
    pub set: Option<SetConfig>,
    /// `modify`: fields to remove (`subclass`, `expiry`, `data`,
    /// `support_instance`).
    #[serde(default)]
    pub remove: Vec<String>,
    /// `aggregate`: keys, count and window.
    #[serde(default)]
    pub aggregate: Option<AggregateConfig>,
}

/// `[rule.match]`: every field given must match.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MatchConfig {
    /// Class.
    pub class: Option<String>,
    /// Subclass.
    pub subclass: Option<String>,
    /// The origin: an ID (and its subtree), or a prefix ending in `*`.
    pub source: Option<String>,
    /// Alarm severities.
    pub severity: Option<Vec<String>>,
    /// Content kind.
    pub kind: Option<String>,
    /// The alarm's or event's support instance: an ID (and its subtree), or
    /// a prefix ending in `*`.
    pub support_instance: Option<String>,
    /// Text the alarm's or event's text contains.
    pub text: Option<String>,
}

/// `[rule.set]` of a `modify` rule.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetConfig {
    /// New class.
    pub class: Option<String>,
    /// New subclass.
    pub subclass: Option<String>,
    /// New precedence, 0..=9.
    pub precedence: Option<u8>,
    /// New persistence.
    pub persistence: Option<bool>,
    /// Expires this many seconds after it passes this hop.
    pub expiry_s: Option<u64>,
    /// New alarm severity.
    pub severity: Option<String>,
    /// New alarm or event text.
    pub text: Option<String>,
}

/// Fields a `modify` rule may remove.
pub const REMOVABLE: [&str; 4] = ["subclass", "expiry", "data", "support_instance"];

/// Where a node's rules come from, so they can be read again.
#[derive(Debug, Clone)]
pub enum RuleSource {
    /// The `[[rule]]` tables of the node's own config file.
    Inline(PathBuf),
    /// A rules file (`rules_file`), holding only `[[rule]]` tables.
    File(PathBuf),
    /// Given in code (a config built without a file); never reloaded.
    Fixed(Vec<RuleConfig>),
}

impl RuleSource {
    /// The source of a node config loaded from `config` (if it was) that
    /// names `rules_file` (relative to the config's directory) or holds
    /// `inline` rules.
    pub fn of(config: Option<&Path>, rules_file: Option<&Path>, inline: &[RuleConfig]) -> Self {
        match (config, rules_file) {
            (_, Some(f)) if f.is_absolute() => RuleSource::File(f.to_path_buf()),
            (Some(c), Some(f)) => RuleSource::File(
                c.parent()
                    .map(|d| d.join(f))
                    .unwrap_or_else(|| f.to_path_buf()),
            ),
            (None, Some(f)) => RuleSource::File(f.to_path_buf()),
            (Some(c), None) => RuleSource::Inline(c.to_path_buf()),
            (None, None) => RuleSource::Fixed(inline.to_vec()),
        }
    }

    /// The file to watch for changes, if any.
    pub fn path(&self) -> Option<&Path> {
        match self {
            RuleSource::Inline(p) | RuleSource::File(p) => Some(p),
            RuleSource::Fixed(_) => None,
        }
    }
}

/// Which node the rules are for: an aggregate holds messages in an MLM's
/// store and is refused elsewhere; back-channel rules run at an MLM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeKind {
    /// An MLM: every action, both directions.
    Mlm,
    /// A proxy: `filter` and `modify`, on what integrators send.
    Proxy,
}

/// A rule list that was refused, with every problem.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct RulesError {
    /// One line per problem, each starting `FILE:LINE:` where known.
    pub problems: Vec<String>,
}

impl fmt::Display for RulesError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.problems.join("; "))
    }
}

#[derive(Deserialize)]
struct Inline {
    #[serde(default)]
    rule: Vec<Spanned<RuleConfig>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RulesFile {
    #[serde(default)]
    rule: Vec<Spanned<RuleConfig>>,
}

/// Reads and checks the rules of `source` for a `node`.
///
/// # Errors
/// Every problem, each naming the file and line.
pub fn load(source: &RuleSource, node: NodeKind) -> Result<Vec<RuleConfig>, RulesError> {
    let (path, text) = match read(source, node)? {
        Ok(x) => x,
        Err(rules) => return Ok(rules),
    };
    load_text(source, path, &text, node)
}

/// The file's text, or (for [`RuleSource::Fixed`]) the checked rules.
#[allow(clippy::type_complexity)]
fn read(
    source: &RuleSource,
    node: NodeKind,
) -> Result<Result<(&Path, String), Vec<RuleConfig>>, RulesError> {
    Ok(Ok(match source {
        RuleSource::Fixed(rules) => {
            let mut problems = Vec::new();
            let named: Vec<_> = rules.iter().map(|r| (String::new(), r)).collect();
            validate(&named, node, &mut problems);
            return if problems.is_empty() {
                Ok(Err(rules.clone()))
            } else {
                Err(RulesError { problems })
            };
        }
        RuleSource::Inline(p) | RuleSource::File(p) => match std::fs::read_to_string(p) {
            Ok(t) => (p.as_path(), t),
            Err(e) => {
                return Err(RulesError {
                    problems: vec![format!("{}: {e}", p.display())],
                })
            }
        },
    }))
}

/// Checks rules written as `text`, as if read from `path` (a node config
/// or a rules file, as `source` says), naming `path` in every problem.
///
/// # Errors
/// Every problem, each naming the file and line.
pub fn load_text(
    source: &RuleSource,
    path: &Path,
    text: &str,
    node: NodeKind,
) -> Result<Vec<RuleConfig>, RulesError> {
    let text = text.to_string();
    let parsed = match source {
        RuleSource::File(_) => toml::from_str::<RulesFile>(&text).map(|f| f.rule),
        _ => toml::from_str::<Inline>(&text).map(|f| f.rule),
    };
    let spanned = parsed.map_err(|e| RulesError {
        problems: vec![format!(
            "{}:{}: {}",
            path.display(),
            e.span().map_or(1, |s| line_of(&text, s.start)),
            e.message()
        )],
    })?;
    // A node config's own errors are prefixed with its name already.
    let file = match source {
        RuleSource::Inline(_) => "line ".to_string(),
        _ => format!("{}:", path.display()),
    };
    let named: Vec<_> = spanned
        .iter()
        .map(|s| {
            let at = format!("{file}{}: ", line_of(&text, s.span().start));
            (at, s.get_ref())
        })
        .collect();
    let mut problems = Vec::new();
    validate(&named, node, &mut problems);
    if problems.is_empty() {
        Ok(spanned.into_iter().map(Spanned::into_inner).collect())
    } else {
        Err(RulesError { problems })
    }
}

/// Checks the rules of a node config loaded from `config` (which names
/// `rules_file`, or holds `inline` rules); adds every problem to `errors`.
pub fn check_config(
    config: &Path,
    rules_file: Option<&Path>,
    inline: &[RuleConfig],
    node: NodeKind,
    errors: &mut Vec<String>,
) {
    if rules_file.is_some() && !inline.is_empty() {
        errors.push("rules_file and [[rule]]: give the rules in one place, not both".into());
        return;
    }
    if let Err(e) = load(&RuleSource::of(Some(config), rules_file, inline), node) {
        errors.extend(e.problems);
    }
}

/// The 1-based line of byte `offset` in `text`.
fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|b| **b == b'\n')
        .count()
        + 1
}

/// Whether `s` is a source or support-instance pattern: an ID, or a
/// non-empty prefix ending in one `*`.
pub(super) fn valid_pattern(s: &str) -> bool {
    match s.strip_suffix('*') {
        Some(p) => !p.is_empty() && !p.contains('*'),
        None => s.parse::<crate::id::ComponentId>().is_ok(),
    }
}

pub(super) fn parse_severity(s: &str) -> Option<crate::model::Severity> {
    serde_json::from_value(serde_json::json!(s)).ok()
}

/// Checks each rule (with the `FILE:LINE: ` it is at) and adds every
/// problem to `problems`.
fn validate(rules: &[(String, &RuleConfig)], node: NodeKind, problems: &mut Vec<String>) {
    let mut names = HashSet::new();
    for (i, (at, r)) in rules.iter().enumerate() {
        let at = format!("{at}rule[{i}] {:?}", r.name);
        let mut bad = |what: String| problems.push(format!("{at}: {what}"));
        if r.name.is_empty() || r.name.len() > 64 || !names.insert(r.name.as_str()) {
            bad("name must be given, unique and at most 64 bytes".into());
        }
        let back = match r.applies.as_deref() {
            None | Some("forward") => false,
            Some("back" | "both") => true,
            Some(o) => {
                bad(format!("applies: {o:?} (expected forward, back or both)"));
                false
            }
        };
        if back && node == NodeKind::Proxy {
            bad("applies: back-channel rules run at an MLM, not at a proxy".into());
        }
        let m = &r.matches;
        for (k, v) in [("class", &m.class), ("subclass", &m.subclass)] {
            if v.as_ref().is_some_and(|c| !valid_class(c)) {
                bad(format!("match.{k}: not a class label"));
            }
        }
        for (k, v) in [
            ("source", &m.source),
            ("support_instance", &m.support_instance),
        ] {
            if let Some(s) = v {
                if !valid_pattern(s) {
                    bad(format!(
                        "match.{k}: {s:?} is neither an ID nor a prefix ending in *"
                    ));
                }
            }
        }
        if back && m.source.is_some() {
            bad("match.source: back-channel messages have destinations, not a source".into());
        }
        for s in m.severity.iter().flatten() {
            if parse_severity(s).is_none() {
                bad(format!(
                    "match.severity: {s:?} (clear, info, warning, minor, major, critical)"
                ));
            }
        }
        if let Some(k) = &m.kind {
            if ContentKind::parse(k).is_none() {
                bad(format!("match.kind: {k:?} is not a content kind"));
            }
        }
        if m.text.as_ref().is_some_and(|t| t.is_empty()) {
            bad("match.text: must not be empty".into());
        }
        let modifies = r.set.is_some() || !r.remove.is_empty();
        match r.action.as_str() {
            "filter" => {
                if modifies || r.aggregate.is_some() {
                    bad("a filter rule takes no set, remove or aggregate".into());
                }
            }
            "modify" => {
                if !modifies {
                    bad("a modify rule needs [rule.set] or remove".into());
                }
                if r.aggregate.is_some() {
                    bad("a modify rule takes no [rule.aggregate]".into());
                }
                validate_set(r, &mut bad);
            }
            "aggregate" => {
                if node == NodeKind::Proxy {
                    bad("action \"aggregate\" runs at an MLM (it holds messages in the MLM's store), not at a proxy".into());
                }
                if back {
                    bad("applies: an aggregate folds forward messages only".into());
                }
                if modifies {
                    bad("an aggregate rule takes no set or remove".into());
                }
                match &r.aggregate {
                    None => bad("an aggregate rule needs [rule.aggregate]".into()),
                    Some(a) => a.validate(&mut bad),
                }
                if let Some(k) = m.kind.as_deref().and_then(ContentKind::parse) {
                    if !matches!(k, ContentKind::Alarm | ContentKind::Event) {
                        bad("match.kind: an aggregate folds alarms and events only".into());
                    }
                }
            }
            other => bad(format!(
                "action {other:?} (expected filter, modify or aggregate)"
            )),
        }
    }
}

fn validate_set(r: &RuleConfig, bad: &mut impl FnMut(String)) {
    for f in &r.remove {
        if !REMOVABLE.contains(&f.as_str()) {
            bad(format!(
                "remove: {f:?} (removable: {})",
                REMOVABLE.join(", ")
            ));
        }
    }
    let Some(s) = &r.set else { return };
    for (k, v) in [("class", &s.class), ("subclass", &s.subclass)] {
        if v.as_ref().is_some_and(|c| !valid_class(c)) {
            bad(format!("set.{k}: not a class label"));
        }
    }
    if s.subclass.is_some() && r.remove.iter().any(|f| f == "subclass") {
        bad("set.subclass and remove \"subclass\" contradict each other".into());
    }
    if s.expiry_s.is_some() && r.remove.iter().any(|f| f == "expiry") {
        bad("set.expiry_s and remove \"expiry\" contradict each other".into());
    }
    if s.precedence
        .is_some_and(|p| p > crate::model::MAX_PRECEDENCE)
    {
        bad(format!(
            "set.precedence: at most {}",
            crate::model::MAX_PRECEDENCE
        ));
    }
    if s.expiry_s == Some(0) {
        bad("set.expiry_s: must be at least 1".into());
    }
    if let Some(v) = &s.severity {
        if parse_severity(v).is_none() {
            bad(format!(
                "set.severity: {v:?} (clear, info, warning, minor, major, critical)"
            ));
        }
    }
    if s.text.as_ref().is_some_and(|t| t.len() > MAX_TEXT_BYTES) {
        bad(format!("set.text: at most {MAX_TEXT_BYTES} bytes"));
    }
}

/// What [`KeyField`]s an aggregate's `by` names, for the error text.
pub(super) fn key_fields() -> String {
    KeyField::ALL
        .iter()
        .map(|k| k.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}
