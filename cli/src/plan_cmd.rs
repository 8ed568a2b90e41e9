//! `era5 plan`: list the selection and print objects and bytes per product and variable, or
//! the object list as JSON.

use std::collections::BTreeMap;
use std::io::Write;

use common::ObjectKey;
use common::source::RemoteObject;
use common::units::human_bytes;
use serde::Serialize;

/// Writes the per product and variable table.
pub fn write_table(out: &mut impl Write, objects: &[RemoteObject]) -> std::io::Result<()> {
    let mut groups: BTreeMap<(String, String), (u64, u64)> = BTreeMap::new();
    for object in objects {
        let (product, variable) = match ObjectKey::parse(&object.key) {
            Some(key) => (key.product.name().to_string(), key.short),
            None => continue,
        };
        let group = groups.entry((product, variable)).or_default();
        group.0 += 1;
        group.1 += object.size;
    }
    writeln!(
        out,
        "{:<26} {:<10} {:>8} {:>16}",
        "PRODUCT", "VARIABLE", "OBJECTS", "BYTES"
    )?;
    for ((product, variable), (count, bytes)) in &groups {
        writeln!(
            out,
            "{product:<26} {variable:<10} {count:>8} {bytes:>16}  ({})",
            human_bytes(*bytes)
        )?;
    }
    let total: u64 = objects.iter().map(|o| o.size).sum();
    writeln!(
        out,
        "{:<26} {:<10} {:>8} {:>16}  ({})",
        "TOTAL",
        "",
        objects.len(),
        total,
        human_bytes(total)
    )
}

#[derive(Serialize)]
struct PlanJson<'a> {
    objects: &'a [RemoteObject],
    total_bytes: u64,
}

/// Writes `{"objects":[{"key":…,"size":…,"etag":…}, …], "total_bytes":…}`.
pub fn write_json(out: &mut impl Write, objects: &[RemoteObject]) -> std::io::Result<()> {
    let plan = PlanJson {
        objects,
        total_bytes: objects.iter().map(|o| o.size).sum(),
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

    #[test]
    fn table_groups_by_product_and_variable_and_totals() {
        let objects = [
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
        ];
        let mut out = Vec::new();
        write_table(&mut out, &objects).unwrap();
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4, "{text}");
        assert!(
            lines[1].starts_with("e5.oper.an.sfc")
                && lines[1].contains(" 2t ")
                && lines[1].contains(" 150 "),
            "{text}"
        );
        assert!(
            lines[2].contains(" msl ") && lines[2].contains(" 7 "),
            "{text}"
        );
        assert!(
            lines[3].starts_with("TOTAL") && lines[3].contains(" 3 ") && lines[3].contains(" 157 "),
            "{text}"
        );
    }

    #[test]
    fn json_has_the_documented_shape() {
        let mut out = Vec::new();
        write_json(&mut out, &[object("k", 5)]).unwrap();
        let value: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(
            value,
            serde_json::json!({"objects":[{"key":"k","size":5,"etag":"abc"}],"total_bytes":5})
        );
    }
}
