//! `--shard I/N`: one of N disjoint parts of a plan, for schedulers that fan out tasks
//! themselves (Kubernetes Indexed Jobs, Slurm arrays, Argo).
//!
//! **Shards are deterministic from the plan, disjoint, balanced by bytes, and together exactly
//! the plan.** Objects are taken in key order and cut into N contiguous runs of about equal
//! bytes: an object belongs to the shard its middle byte falls in, counting bytes from the
//! first key. So every object is in exactly one shard, the order the listing came in does not
//! matter, each shard holds within one object's size of a fair share of the bytes, and a shard
//! is a run of neighbouring keys (whole months of a variable, as far as sizes allow), which
//! keeps a new object from moving more than the objects around a boundary.
//!
//! `auto/N` takes I from the scheduler: `JOB_COMPLETION_INDEX` (a Kubernetes Indexed Job) or
//! `SLURM_ARRAY_TASK_ID` less `SLURM_ARRAY_TASK_MIN` (a Slurm array, whatever its first id).
//! It refuses to guess when neither is set.

use std::fmt;

/// Most shards a plan may be cut into.
pub const MAX_SHARDS: u32 = 100_000;

/// The environment variable a Kubernetes Indexed Job sets to the pod's index.
pub const KUBERNETES_INDEX: &str = "JOB_COMPLETION_INDEX";
/// The environment variable a Slurm array sets to the task's id.
pub const SLURM_TASK_ID: &str = "SLURM_ARRAY_TASK_ID";
/// The first task id of the Slurm array.
pub const SLURM_TASK_MIN: &str = "SLURM_ARRAY_TASK_MIN";

/// Shard `index` of `count` (0-based).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Shard {
    /// Which shard, `0..count`.
    pub index: u32,
    /// How many.
    pub count: u32,
}

impl fmt::Display for Shard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

impl Shard {
    /// `I/N` or `auto/N`; `env` reads the scheduler's variables for `auto`. The error says
    /// what is wrong, for a message that names the value.
    pub fn parse(text: &str, env: impl Fn(&str) -> Option<String>) -> Result<Self, String> {
        let (index, count) = text
            .split_once('/')
            .ok_or("expected I/N (e.g. 0/4) or auto/N")?;
        let count: u32 = count
            .trim()
            .parse()
            .ok()
            .filter(|count| (1..=MAX_SHARDS).contains(count))
            .ok_or(format!("N must be a whole number from 1 to {MAX_SHARDS}"))?;
        let index = match index.trim() {
            "auto" => Self::index_from_scheduler(&env)?,
            index => index
                .parse::<u32>()
                .map_err(|_| "I must be a whole number from 0, or auto".to_string())?,
        };
        if index >= count {
            return Err(format!(
                "shard index {index} is not below the {count} shards (indexes run from 0 to {})",
                count - 1
            ));
        }
        Ok(Self { index, count })
    }

    fn index_from_scheduler(env: &impl Fn(&str) -> Option<String>) -> Result<u32, String> {
        let number = |name: &str| -> Result<Option<u32>, String> {
            match env(name) {
                None => Ok(None),
                Some(value) => value
                    .trim()
                    .parse()
                    .map(Some)
                    .map_err(|_| format!("{name}={value} is not a whole number")),
            }
        };
        if let Some(index) = number(KUBERNETES_INDEX)? {
            return Ok(index);
        }
        if let Some(task) = number(SLURM_TASK_ID)? {
            let first = number(SLURM_TASK_MIN)?.unwrap_or(0);
            return task.checked_sub(first).ok_or(format!(
                "{SLURM_TASK_ID}={task} is below {SLURM_TASK_MIN}={first}"
            ));
        }
        Err(format!(
            "auto needs {KUBERNETES_INDEX} (a Kubernetes Indexed Job) or {SLURM_TASK_ID} (a Slurm array), and neither is set; give the index: I/N"
        ))
    }

    /// The objects of this shard among `items`, in their order; `key_size` gives an item's
    /// key and size.
    pub fn select<T>(&self, items: Vec<T>, key_size: impl Fn(&T) -> (&str, u64)) -> Vec<T> {
        let shards = assign(self.count, &items, &key_size);
        items
            .into_iter()
            .zip(shards)
            .filter(|(_, shard)| *shard == self.index)
            .map(|(item, _)| item)
            .collect()
    }
}

/// The shard of each of `items` (in their order) among `count`, as the module doc says.
pub fn assign<T>(count: u32, items: &[T], key_size: impl Fn(&T) -> (&str, u64)) -> Vec<u32> {
    let mut order: Vec<usize> = (0..items.len()).collect();
    // Key order, then size, then position: the same for any order the items come in (keys
    // are unique in a listing; the rest only makes the order total).
    order.sort_by(|&a, &b| {
        key_size(&items[a])
            .cmp(&key_size(&items[b]))
            .then(a.cmp(&b))
    });
    let total: u128 = items.iter().map(|item| u128::from(key_size(item).1)).sum();
    let count_wide = u128::from(count);
    let mut shards = vec![0; items.len()];
    let mut before: u128 = 0;
    for (rank, &at) in order.iter().enumerate() {
        let size = u128::from(key_size(&items[at]).1);
        let shard = if total == 0 {
            // Nothing but empty objects: cut by count instead.
            rank as u128 * count_wide / items.len() as u128
        } else {
            // The middle byte's shard: floor((before + size/2) * N / total), in halves.
            (2 * before + size) * count_wide / (2 * total)
        };
        shards[at] = shard.min(count_wide - 1) as u32;
        before += size;
    }
    shards
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn env(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |name| {
            pairs
                .iter()
                .find(|(key, _)| *key == name)
                .map(|(_, value)| (*value).to_string())
        }
    }

    #[test]
    fn shards_parse_from_an_index_or_the_scheduler() {
        let none = env(&[]);
        assert_eq!(Shard::parse("0/4", &none), Ok(Shard { index: 0, count: 4 }));
        assert_eq!(Shard::parse("3/4", &none), Ok(Shard { index: 3, count: 4 }));
        let k8s = env(&[("JOB_COMPLETION_INDEX", "2"), ("SLURM_ARRAY_TASK_ID", "9")]);
        assert_eq!(
            Shard::parse("auto/4", k8s),
            Ok(Shard { index: 2, count: 4 })
        );
        let slurm = env(&[("SLURM_ARRAY_TASK_ID", "5"), ("SLURM_ARRAY_TASK_MIN", "4")]);
        assert_eq!(
            Shard::parse("auto/4", slurm),
            Ok(Shard { index: 1, count: 4 })
        );
        let slurm_from_zero = env(&[("SLURM_ARRAY_TASK_ID", "3")]);
        assert_eq!(
            Shard::parse("auto/4", slurm_from_zero),
            Ok(Shard { index: 3, count: 4 })
        );
    }

    #[test]
    fn bad_shards_say_what_is_wrong() {
        let none = env(&[]);
        let refused = |text: &str| Shard::parse(text, &none).unwrap_err();
        assert!(refused("4/4").contains("not below the 4 shards"));
        assert!(refused("1").contains("expected I/N"));
        assert!(refused("1/0").contains("N must be"));
        assert!(refused("-1/4").contains("I must be"));
        assert!(refused("1/x").contains("N must be"));
        assert!(refused("1/100001").contains("N must be"));
        assert!(refused("auto/4").contains("neither is set"));
        let junk = env(&[("JOB_COMPLETION_INDEX", "two")]);
        assert!(
            Shard::parse("auto/4", junk)
                .unwrap_err()
                .contains("JOB_COMPLETION_INDEX=two")
        );
        let beyond = env(&[("JOB_COMPLETION_INDEX", "4")]);
        assert!(
            Shard::parse("auto/4", beyond)
                .unwrap_err()
                .contains("not below")
        );
        let below = env(&[("SLURM_ARRAY_TASK_ID", "1"), ("SLURM_ARRAY_TASK_MIN", "2")]);
        assert!(Shard::parse("auto/4", below).unwrap_err().contains("below"));
    }

    fn key_size(item: &(String, u64)) -> (&str, u64) {
        (item.0.as_str(), item.1)
    }

    #[test]
    fn empty_objects_are_cut_by_count() {
        let items: Vec<(String, u64)> = (0..8).map(|i| (format!("k{i}"), 0)).collect();
        let shards = assign(4, &items, key_size);
        assert_eq!(shards, [0, 0, 1, 1, 2, 2, 3, 3]);
    }

    fn listing() -> impl Strategy<Value = Vec<(String, u64)>> {
        // Unique keys, sizes from empty to a few GiB, some of them equal.
        prop::collection::btree_map("[a-d]{1,3}/[0-9]{1,4}", 0u64..5 << 30, 0..120)
            .prop_map(|map| map.into_iter().collect())
    }

    proptest! {
        #[test]
        fn shards_are_disjoint_balanced_contiguous_and_exactly_the_plan(
            (items, shuffled) in listing()
                .prop_flat_map(|items| (Just(items.clone()), Just(items).prop_shuffle())),
            count in 1u32..40,
        ) {
            let shards: Vec<Vec<(String, u64)>> = (0..count)
                .map(|index| Shard { index, count }.select(items.clone(), key_size))
                .collect();
            // Together exactly the plan, each object once.
            let mut union: Vec<&(String, u64)> = shards.iter().flatten().collect();
            union.sort();
            let mut want: Vec<&(String, u64)> = items.iter().collect();
            want.sort();
            prop_assert_eq!(union, want);
            // Balanced by bytes: within one object of a fair share.
            let total: u64 = items.iter().map(|(_, size)| size).sum();
            let largest = items.iter().map(|(_, size)| *size).max().unwrap_or(0);
            for shard in &shards {
                let bytes: u64 = shard.iter().map(|(_, size)| size).sum();
                let fair = total / u64::from(count);
                prop_assert!(bytes.abs_diff(fair) <= largest + 1, "{} vs {}", bytes, fair);
            }
            // Contiguous in key order: shard numbers never go down along the keys.
            let mut by_key = items.clone();
            by_key.sort();
            let along = assign(count, &by_key, key_size);
            prop_assert!(along.windows(2).all(|pair| pair[0] <= pair[1]));
            // Deterministic whatever order the listing came in.
            for (index, shard) in shards.iter().enumerate() {
                let mut again = Shard { index: index as u32, count }.select(shuffled.clone(), key_size);
                again.sort();
                let mut shard = shard.clone();
                shard.sort();
                prop_assert_eq!(again, shard);
            }
        }
    }
}
