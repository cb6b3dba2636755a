//! The component tree as people draw it: the appserver at the root, each
//! component under the first hop of its parent path (DESIGN.md §5: the
//! appserver keeps the whole topology). One order for every view of it,
//! `rsnet-ctl components --tree` and the admin page alike.
//!
//! The parent paths come from routing lists children sent: the walk never
//! trusts them to form a tree. A component whose parent is not listed
//! hangs under the root; one caught in a cycle, or deeper than
//! [`MAX_DEPTH`], is drawn at the top level rather than lost.

/// Deepest level drawn; anything below is drawn at the top level.
pub const MAX_DEPTH: usize = 32;

/// One component in drawing order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    /// Its index in the caller's list.
    pub index: usize,
    /// 0 for the root (and for what could not be placed), 1 under it, …
    pub depth: usize,
    /// For each level from 1 to `depth`: whether the ancestor at that
    /// level (the component itself, last) is the last of its siblings.
    pub last: Vec<bool>,
}

impl Row {
    /// The text prefix that draws this row's place in the tree (`├─ `,
    /// `│  └─ `, …).
    pub fn prefix(&self) -> String {
        let mut s = String::new();
        for (i, last) in self.last.iter().enumerate() {
            let is_self = i + 1 == self.last.len();
            s.push_str(match (is_self, last) {
                (true, true) => "└─ ",
                (true, false) => "├─ ",
                (false, true) => "   ",
                (false, false) => "│  ",
            });
        }
        s
    }
}

/// The drawing order of components `ids[i]` whose parent is `parents[i]`
/// (the first hop of its parent path; `None` right under the root), with
/// `root` (the appserver's index) first.
pub fn preorder(ids: &[&str], parents: &[Option<&str>], root: Option<usize>) -> Vec<Row> {
    use std::collections::{BTreeMap, HashMap};
    let at: HashMap<&str, usize> = ids.iter().enumerate().map(|(i, id)| (*id, i)).collect();
    // Children by parent index (usize::MAX: the root), in ID order.
    let mut children: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for (i, p) in parents.iter().enumerate() {
        if Some(i) == root {
            continue;
        }
        let parent = p
            .and_then(|p| at.get(p).copied())
            .filter(|p| *p != i)
            .or(root)
            .unwrap_or(usize::MAX);
        children.entry(parent).or_default().push(i);
    }
    for v in children.values_mut() {
        v.sort_by(|a, b| ids[*a].cmp(ids[*b]));
    }
    let mut out = Vec::with_capacity(ids.len());
    let mut placed = vec![false; ids.len()];
    let mut stack: Vec<(usize, Vec<bool>)> = Vec::new();
    let top = match root {
        Some(r) => {
            placed[r] = true;
            out.push(Row {
                index: r,
                depth: 0,
                last: Vec::new(),
            });
            r
        }
        None => usize::MAX,
    };
    let push_children = |stack: &mut Vec<(usize, Vec<bool>)>, of: usize, last: &[bool]| {
        if let Some(kids) = children.get(&of) {
            for (k, c) in kids.iter().enumerate().rev() {
                let mut l = last.to_vec();
                l.push(k + 1 == kids.len());
                stack.push((*c, l));
            }
        }
    };
    push_children(&mut stack, top, &[]);
    while let Some((i, last)) = stack.pop() {
        if placed[i] || last.len() > MAX_DEPTH {
            continue;
        }
        placed[i] = true;
        push_children(&mut stack, i, &last);
        out.push(Row {
            index: i,
            depth: last.len(),
            last,
        });
    }
    // Whatever a cycle or the depth bound kept out, at the top level.
    for (i, p) in placed.iter().enumerate() {
        if !p {
            out.push(Row {
                index: i,
                depth: 0,
                last: Vec::new(),
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn draw(ids: &[&str], parents: &[Option<&str>], root: Option<usize>) -> String {
        preorder(ids, parents, root)
            .iter()
            .map(|r| format!("{}{}\n", r.prefix(), ids[r.index]))
            .collect()
    }

    #[test]
    fn components_hang_under_their_first_parent_in_id_order() {
        let ids = ["p.app", "a.p2", "a.mlm1", "a.p1", "a.p1.si1", "a.p9"];
        let parents = [
            None,
            Some("a.mlm1"),
            None,
            Some("a.mlm1"),
            Some("a.p1"),
            Some("a.gone"),
        ];
        assert_eq!(
            draw(&ids, &parents, Some(0)),
            "p.app\n├─ a.mlm1\n│  ├─ a.p1\n│  │  └─ a.p1.si1\n│  └─ a.p2\n└─ a.p9\n"
        );
    }

    #[test]
    fn a_cycle_or_a_self_parent_loses_nobody() {
        let ids = ["x", "y", "z"];
        let parents = [Some("y"), Some("x"), Some("z")];
        let rows = preorder(&ids, &parents, None);
        let mut seen: Vec<usize> = rows.iter().map(|r| r.index).collect();
        seen.sort();
        assert_eq!(seen, vec![0, 1, 2]);
        assert_eq!(draw(&ids, &parents, None), "└─ z\nx\ny\n");
    }

    #[test]
    fn a_chain_deeper_than_the_bound_is_drawn_flat_below_it() {
        let ids: Vec<String> = (0..40).map(|i| format!("n{i:02}")).collect();
        let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
        let parents: Vec<Option<&str>> = (0..40).map(|i| (i > 0).then(|| refs[i - 1])).collect();
        let rows = preorder(&refs, &parents, None);
        assert_eq!(rows.len(), 40);
        assert!(rows.iter().all(|r| r.depth <= MAX_DEPTH));
    }
}
