//! Splits a job's objects into lease items: one product over a contiguous range of days,
//! bounded in bytes and objects, so a lost worker costs little.
//!
//! Objects covering the same time window (all variables of one day, say) stay together, so
//! items of one product never overlap in time; a window larger than the bounds forms an item of
//! its own.

use std::collections::BTreeMap;

use common::RemoteObject;
use common::catalog::ObjectKey;
use common::dates::HourStamp;

use crate::model::{ItemSpec, JobSpec, ObjectSpec, SelectionSpec, SourceSpec};

/// Bounds of one item.
#[derive(Clone, Copy, Debug)]
pub struct ItemLimits {
    /// Largest total size.
    pub max_bytes: u64,
    /// Most objects.
    pub max_objects: usize,
}

impl Default for ItemLimits {
    fn default() -> Self {
        Self {
            max_bytes: 8 << 30,
            max_objects: 32,
        }
    }
}

/// A product's objects grouped by the time window in their names (first and last hour). Only
/// the window of a parsed key is kept: on the whole archive a parsed key per object (three more
/// strings) was the planner's largest allocation.
type ObjectsByWindow = BTreeMap<(HourStamp, HourStamp), Vec<RemoteObject>>;

/// Plans a job from a selection's listing (objects that do not parse as ERA5 keys are left
/// out; discovery never returns any).
pub fn plan_job(
    job_id: String,
    selection: SelectionSpec,
    source: SourceSpec,
    objects: Vec<RemoteObject>,
    limits: ItemLimits,
) -> JobSpec {
    JobSpec {
        job_id,
        selection,
        source,
        items: plan_items(objects, limits, ""),
        follow: None,
        bwlimit: None,
    }
}

/// The items of `objects`, as [`plan_job`] makes them, with ids `{id_prefix}{index:06}`: a
/// standing job adds the items of each later pass under a prefix of its own, after the ones
/// it has in plan order.
pub fn plan_items(
    objects: Vec<RemoteObject>,
    limits: ItemLimits,
    id_prefix: &str,
) -> Vec<ItemSpec> {
    let mut windows: BTreeMap<String, ObjectsByWindow> = BTreeMap::new();
    for object in objects {
        let Some(key) = ObjectKey::parse(&object.key) else {
            continue;
        };
        windows
            .entry(key.product.name().to_string())
            .or_default()
            .entry((key.first, key.last))
            .or_default()
            .push(object);
    }
    let mut items = Vec::new();
    for (product, by_window) in windows {
        let mut current: Vec<RemoteObject> = Vec::new();
        let mut current_bytes = 0u64;
        let mut current_span: Option<(HourStamp, HourStamp)> = None;
        for ((first, last), mut group) in by_window {
            group.sort_by(|a, b| a.key.cmp(&b.key));
            let group_bytes: u64 = group.iter().map(|o| o.size).sum();
            let fits = current.len() + group.len() <= limits.max_objects
                && current_bytes + group_bytes <= limits.max_bytes;
            if let Some(span) = current_span.filter(|_| !fits) {
                items.push(item(
                    format!("{id_prefix}{:06}", items.len()),
                    &product,
                    span,
                    std::mem::take(&mut current),
                ));
                current_bytes = 0;
                current_span = None;
            }
            current_bytes += group_bytes;
            current_span = Some(match current_span {
                Some((from, to)) => (from.min(first), to.max(last)),
                None => (first, last),
            });
            current.extend(group);
        }
        if let Some(span) = current_span {
            items.push(item(
                format!("{id_prefix}{:06}", items.len()),
                &product,
                span,
                current,
            ));
        }
    }
    items
}

/// An item of `objects`, whose windows together span `span`.
fn item(
    item_id: String,
    product: &str,
    span: (HourStamp, HourStamp),
    objects: Vec<RemoteObject>,
) -> ItemSpec {
    ItemSpec {
        item_id,
        product: product.to_string(),
        start: span.0.date.to_string(),
        end: span.1.date.to_string(),
        objects: objects
            .into_iter()
            .map(|o| ObjectSpec {
                key: o.key,
                size: o.size,
                etag: o.etag.unwrap_or_default(),
                last_modified: o.last_modified.unwrap_or_default(),
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use common::catalog::Product;
    use common::dates::YearMonth;
    use proptest::prelude::*;

    fn listing(
        products: &[Product],
        shorts_per_product: usize,
        months: u32,
        size: u64,
    ) -> Vec<RemoteObject> {
        let mut objects = Vec::new();
        for product in products {
            for variable in product.variables().take(shorts_per_product) {
                let mut month = YearMonth {
                    year: 2020,
                    month: 1,
                };
                for _ in 0..months {
                    for (first, last) in product.windows_in_month(month) {
                        objects.push(RemoteObject {
                            key: variable.key(first, last),
                            size,
                            etag: Some("e".into()),
                            last_modified: None,
                        });
                    }
                    month = month.next();
                }
            }
        }
        objects
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        /// Items partition the objects exactly, respect the bounds (unless one window alone is
        /// larger), hold one product each, and the day ranges of one product do not overlap.
        #[test]
        fn items_partition_the_job_within_bounds(
            shorts in 1usize..6,
            months in 1u32..4,
            max_objects in 1usize..40,
            max_bytes_units in 1u64..50,
            size in 1u64..1000,
        ) {
            let products = [Product::AnPl, Product::AnSfc, Product::FcSfcAccumu, Product::Invariant];
            let objects = listing(&products, shorts, months, size);
            let limits = ItemLimits { max_bytes: max_bytes_units * size, max_objects };
            let job = plan_job("j".into(), SelectionSpec::default(), SourceSpec::default(), objects.clone(), limits);
            let mut planned: Vec<String> = job.items.iter().flat_map(|i| i.objects.iter().map(|o| o.key.clone())).collect();
            let mut listed: Vec<String> = objects.iter().map(|o| o.key.clone()).collect();
            planned.sort();
            listed.sort();
            prop_assert_eq!(planned, listed);
            for item in &job.items {
                let windows: std::collections::BTreeSet<_> = item.objects.iter().map(|o| {
                    let k = ObjectKey::parse(&o.key).unwrap();
                    prop_assert_eq!(k.product.name(), item.product.as_str());
                    Ok((k.first, k.last))
                }).collect::<Result<_, TestCaseError>>()?;
                if windows.len() > 1 {
                    prop_assert!(item.objects.len() <= limits.max_objects);
                    prop_assert!(item.bytes() <= limits.max_bytes);
                }
            }
            for pair in job.items.windows(2) {
                if pair[0].product == pair[1].product {
                    let last_of_first = pair[0].objects.iter().map(|o| ObjectKey::parse(&o.key).unwrap().first).max();
                    let first_of_next = pair[1].objects.iter().map(|o| ObjectKey::parse(&o.key).unwrap().first).min();
                    prop_assert!(last_of_first < first_of_next, "items overlap in time");
                }
            }
            let mut ids: Vec<&str> = job.items.iter().map(|i| i.item_id.as_str()).collect();
            let sorted = { let mut s = ids.clone(); s.sort_unstable(); s };
            prop_assert_eq!(&ids, &sorted);
            ids.dedup();
            prop_assert_eq!(ids.len(), job.items.len());
        }
    }

    #[test]
    fn a_month_of_pressure_levels_splits_by_whole_days() {
        let objects = listing(&[Product::AnPl], 16, 1, 1 << 30);
        let job = plan_job(
            "j".into(),
            SelectionSpec::default(),
            SourceSpec::default(),
            objects,
            ItemLimits::default(),
        );
        // 16 variables x 1 GiB per day: 8 GiB per item = half a day would split a window, so a
        // window (16 GiB) is an item of its own: one item per day.
        assert_eq!(job.items.len(), 31);
        assert!(
            job.items
                .iter()
                .all(|i| i.start == i.end && i.objects.len() == 16)
        );
    }
}
