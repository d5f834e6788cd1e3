//! How a batch's writes become requests: one unlogged batch per program (one Cassandra
//! partition), at most [`MAX_BATCH_ROWS`] rows each.

use rustc_hash::FxHashMap;

use crate::writer::row::RowWrite;

/// Rows per request: one request instead of eight, and well under Cassandra's 5 KiB batch
/// warning for typical rows.
pub const MAX_BATCH_ROWS: usize = 8;

/// Group `writes` by program, keeping each program's rows in message order (so that two
/// writes of the same row in one batch reach Cassandra in the order they were consumed; their
/// timestamps decide anyway), programs in order of first appearance.
pub fn requests(writes: Vec<RowWrite>) -> Vec<Vec<RowWrite>> {
    let mut slot: FxHashMap<String, usize> = FxHashMap::default();
    let mut groups: Vec<Vec<RowWrite>> = Vec::new();
    for w in writes {
        let i = match slot.get(w.op.program_id()) {
            Some(&i) if groups[i].len() < MAX_BATCH_ROWS => i,
            _ => {
                groups.push(Vec::with_capacity(MAX_BATCH_ROWS));
                slot.insert(w.op.program_id().to_owned(), groups.len() - 1);
                groups.len() - 1
            }
        };
        groups[i].push(w);
    }
    groups
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::writer::row::Op;

    fn delete(index: u32, program: &str) -> RowWrite {
        RowWrite {
            index,
            op: Op::Delete((1, program.into(), format!("u{index}"))),
        }
    }

    #[test]
    fn groups_by_program_in_order_and_caps_the_size() {
        let mut writes = Vec::new();
        for i in 0..20 {
            writes.push(delete(i, if i % 2 == 0 { "a" } else { "b" }));
        }
        let groups = requests(writes);
        let shape: Vec<(String, Vec<u32>)> = groups
            .iter()
            .map(|g| {
                (
                    g[0].op.program_id().to_owned(),
                    g.iter().map(|w| w.index).collect(),
                )
            })
            .collect();
        assert_eq!(
            shape,
            vec![
                ("a".into(), vec![0, 2, 4, 6, 8, 10, 12, 14]),
                ("b".into(), vec![1, 3, 5, 7, 9, 11, 13, 15]),
                ("a".into(), vec![16, 18]),
                ("b".into(), vec![17, 19]),
            ]
        );
        assert!(groups
            .iter()
            .all(|g| g.iter().all(|w| w.op.program_id() == g[0].op.program_id())));
    }

    #[test]
    fn nothing_in_nothing_out() {
        assert!(requests(Vec::new()).is_empty());
    }
}
