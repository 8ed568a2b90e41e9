//! `era5 plan`: list the selection and print objects and bytes per product, variable and grid,
//! or the object list as JSON; either way, say how many keys of the layout the catalog does not
//! know, and what the run costs in requests (on stderr below the table, in `cost` of the JSON):
//! the LISTs this listing sent (exact) and the GETs a fresh sync sends at least (one per object;
//! a ranged download sends one per part, and a HEAD), priced with `--prices`. With `--shard`,
//! only that shard's objects, and how much of the plan they are.

use std::collections::BTreeMap;
use std::io::Write;

use common::shard::Shard;
use common::units::{counted, human_bytes};
use common::{ObjectKey, catalog};
use serde::Serialize;
use transport::cost::{Cost, Prices, RequestKind, Traffic};
use transport::{Discovery, KeySample, RemoteObject};

/// What a plan's run costs, as far as a listing can tell.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct PlanCost {
    /// LIST requests this plan sent.
    list: u64,
    /// GET requests a fresh sync sends at least: one per object.
    get_at_least: u64,
    /// The listing's cost plus those GETs', at `--prices`.
    cost_usd_at_least: f64,
}

impl PlanCost {
    /// From the listing's traffic and the objects it found.
    pub fn new(listing: &Traffic, objects: usize, prices: &Prices) -> Self {
        let list = listing.requests(RequestKind::List);
        let get_at_least = objects as u64;
        let listed: Cost = prices.estimate(listing);
        Self {
            list,
            get_at_least,
            cost_usd_at_least: listed.total
                + get_at_least as f64 / 1000.0 * prices.per_thousand(RequestKind::Get),
        }
    }
}

/// Writes the per product, variable and grid table, then the catalog's unknown keys. A variable
/// the catalog does not know is marked `*`.
pub fn write_table(out: &mut impl Write, discovery: &Discovery) -> std::io::Result<()> {
    let objects = &discovery.objects;
    let mut groups: BTreeMap<(String, String, String), (u64, u64, bool)> = BTreeMap::new();
    for object in objects {
        let Some(key) = ObjectKey::parse(&object.key) else {
            continue;
        };
        let known = catalog::lookup(&key).is_some();
        let group = groups
            .entry((key.product.name().to_string(), key.short, key.grid))
            .or_insert((0, 0, known));
        group.0 += 1;
        group.1 += object.size;
    }
    writeln!(
        out,
        "{:<26} {:<10} {:<10} {:>8} {:>16}",
        "PRODUCT", "VARIABLE", "GRID", "OBJECTS", "BYTES"
    )?;
    for ((product, variable, grid), (count, bytes, known)) in &groups {
        let variable = if *known {
            variable.clone()
        } else {
            format!("{variable}*")
        };
        writeln!(
            out,
            "{product:<26} {variable:<10} {grid:<10} {count:>8} {bytes:>16}  ({})",
            human_bytes(*bytes)
        )?;
    }
    let total: u64 = objects.iter().map(|o| o.size).sum();
    writeln!(
        out,
        "{:<26} {:<10} {:<10} {:>8} {:>16}  ({})",
        "TOTAL",
        "",
        "",
        objects.len(),
        total,
        human_bytes(total)
    )?;
    if discovery.unknown.count > 0 {
        writeln!(
            out,
            "* {} keys in the range are not in the catalog (mirrored only when no --var is given), e.g. {}",
            discovery.unknown.count,
            discovery.unknown.sample.join(", ")
        )?;
    }
    Ok(())
}

impl std::fmt::Display for PlanCost {
    /// The line `plan` prints on stderr below its table (stdout keeps the table's format).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "era5: plan: cost: this listing sent {} LIST requests; a fresh sync sends at least {} GET requests (one per object); at least ${:.4} in all at the given prices (S3 Standard's unless --prices)",
            self.list, self.get_at_least, self.cost_usd_at_least
        )
    }
}

/// Which shard of the plan was kept, and how large the whole plan is.
#[derive(Clone, Debug, Serialize)]
pub struct ShardNote {
    /// `I/N`.
    pub shard: String,
    /// Objects of the whole plan.
    pub plan_objects: usize,
    /// Bytes of the whole plan.
    pub plan_bytes: u64,
}

impl ShardNote {
    /// Keeps only `shard`'s objects of `objects`, and says how many the plan had.
    pub fn take(objects: &mut Vec<RemoteObject>, shard: Shard) -> Self {
        let note = Self {
            shard: shard.to_string(),
            plan_objects: objects.len(),
            plan_bytes: objects.iter().map(|o| o.size).sum(),
        };
        *objects = shard.select(std::mem::take(objects), |o| (o.key.as_str(), o.size));
        note
    }
}

impl std::fmt::Display for ShardNote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "era5: shard {} of a plan of {} ({})",
            self.shard,
            counted(self.plan_objects as u64, "object", "objects"),
            human_bytes(self.plan_bytes)
        )
    }
}

#[derive(Serialize)]
struct PlanJson<'a> {
    objects: &'a [RemoteObject],
    total_bytes: u64,
    unknown_keys: &'a KeySample,
    cost: &'a PlanCost,
    #[serde(skip_serializing_if = "Option::is_none")]
    shard: Option<&'a ShardNote>,
}

/// Writes `{"objects":[{"key":…,"size":…,"etag":…}, …], "total_bytes":…,
/// "unknown_keys":{"count":…,"sample":[…]},
/// "cost":{"list":…,"get_at_least":…,"cost_usd_at_least":…}}`, and with a shard
/// `"shard":{"shard":"I/N","plan_objects":…,"plan_bytes":…}`.
pub fn write_json(
    out: &mut impl Write,
    discovery: &Discovery,
    cost: &PlanCost,
    shard: Option<&ShardNote>,
) -> std::io::Result<()> {
    let plan = PlanJson {
        objects: &discovery.objects,
        total_bytes: discovery.objects.iter().map(|o| o.size).sum(),
        unknown_keys: &discovery.unknown,
        cost,
        shard,
    };
    serde_json::to_writer(&mut *out, &plan)?;
    writeln!(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object(key: &str, size: u64) -> RemoteObject {
        RemoteObject {
            key: key.into(),
            size,
            etag: Some("abc".into()),
            last_modified: None,
        }
    }

    fn discovery(objects: Vec<RemoteObject>) -> Discovery {
        Discovery {
            objects,
            ..Discovery::default()
        }
    }

    #[test]
    fn table_groups_by_product_variable_and_grid_and_totals() {
        let objects = vec![
            object(
                "e5.oper.an.sfc/202201/e5.oper.an.sfc.128_167_2t.ll025sc.2022010100_2022013123.nc",
                100,
            ),
            object(
                "e5.oper.an.sfc/202202/e5.oper.an.sfc.128_167_2t.ll025sc.2022020100_2022022823.nc",
                50,
            ),
            object(
                "e5.oper.an.sfc/202201/e5.oper.an.sfc.128_151_msl.ll025sc.2022010100_2022013123.nc",
                7,
            ),
            object(
                "e5.oper.an.sfc/202201/e5.oper.an.sfc.0_5_0_0_0_t.regn320sc.2022010100_2022013123.nc",
                3,
            ),
        ];
        let mut plan = discovery(objects);
        plan.unknown.count = 1;
        plan.unknown.sample = vec![plan.objects[3].key.clone()];
        let mut out = Vec::new();
        write_table(&mut out, &plan).unwrap();
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 6, "{text}");
        assert!(lines[0].contains(" GRID "), "{text}");
        assert!(
            lines[1].starts_with("e5.oper.an.sfc")
                && lines[1].contains(" 2t ")
                && lines[1].contains(" ll025sc ")
                && lines[1].contains(" 150 "),
            "{text}"
        );
        assert!(
            lines[2].contains(" msl ") && lines[2].contains(" 7 "),
            "{text}"
        );
        assert!(
            lines[3].contains(" t* ") && lines[3].contains(" regn320sc "),
            "{text}"
        );
        assert!(
            lines[4].starts_with("TOTAL") && lines[4].contains(" 4 ") && lines[4].contains(" 160 "),
            "{text}"
        );
        assert!(
            lines[5].starts_with("* 1 keys in the range are not in the catalog")
                && lines[5].contains("0_5_0_0_0_t"),
            "{text}"
        );
        assert!(
            no_cost()
                .to_string()
                .starts_with("era5: plan: cost: this listing sent 0 LIST"),
            "{}",
            no_cost()
        );
    }

    fn no_cost() -> PlanCost {
        PlanCost::new(&Traffic::default(), 0, &Prices::default())
    }

    #[test]
    fn the_cost_prices_the_listing_and_one_get_per_object() {
        let counters = transport::cost::TrafficCounters::default();
        for _ in 0..4 {
            counters.request(RequestKind::List);
        }
        let prices = Prices::parse("list=10,get=1").unwrap();
        let cost = PlanCost::new(&counters.snapshot(), 2000, &prices);
        assert_eq!((cost.list, cost.get_at_least), (4, 2000));
        assert!(
            (cost.cost_usd_at_least - (0.04 + 2.0)).abs() < 1e-12,
            "{cost:?}"
        );
    }

    #[test]
    fn json_has_the_documented_shape() {
        let mut out = Vec::new();
        write_json(&mut out, &discovery(vec![object("k", 5)]), &no_cost(), None).unwrap();
        let value: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(
            value,
            serde_json::json!({
                "objects":[{"key":"k","size":5,"etag":"abc"}],
                "total_bytes":5,
                "unknown_keys":{"count":0,"sample":[]},
                "cost":{"list":0,"get_at_least":0,"cost_usd_at_least":0.0}
            })
        );
    }
}
