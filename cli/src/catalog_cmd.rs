//! `era5 catalog`: the products (cadence, first month, and the latest month the bucket holds
//! when it answers) and their variables (code, short name, long name, units, grid), as a table
//! or JSON. The table is the catalog the selection rules use, so what this prints is exactly
//! what `--var` and `--grid` accept.

use std::io::Write;
use std::time::Duration;

use common::catalog::{Evidence, Product, Variable};
use common::dates::YearMonth;
use common::error::InputError;
use futures_util::future::join_all;
use serde::Serialize;
use transport::retry::RetryPolicy;
use transport::{Source, SourceConfig, coverage};

use crate::args::CatalogArgs;
use crate::config::check_endpoint;
use crate::exit::{ExitCode, Failure};

/// How long the latest-month lookups may take together: the catalog is useful offline, so an
/// unreachable bucket costs seconds, not minutes.
const LOOKUP_DEADLINE: Duration = Duration::from_secs(10);

/// `era5 catalog`, validated.
#[derive(Debug)]
pub struct CatalogConfig {
    /// Products to show, in catalog order.
    pub products: Vec<Product>,
    /// Where to look up latest months; `None` with `--offline`.
    pub source: Option<SourceConfig>,
    /// JSON output.
    pub json: bool,
}

impl TryFrom<&CatalogArgs> for CatalogConfig {
    type Error = InputError;

    fn try_from(args: &CatalogArgs) -> Result<Self, InputError> {
        check_endpoint(&args.source.endpoint)?;
        let mut products = Vec::new();
        for name in args
            .product
            .iter()
            .map(|p| p.trim())
            .filter(|p| !p.is_empty())
        {
            let product: Product = name.parse()?;
            if !products.contains(&product) {
                products.push(product);
            }
        }
        if products.is_empty() {
            products = Product::ALL.to_vec();
        }
        products.sort();
        Ok(Self {
            products,
            source: (!args.offline)
                .then(|| crate::config::listing_source(&args.source, &args.listing))
                .transpose()?,
            json: args.json,
        })
    }
}

/// One product as printed.
#[derive(Serialize)]
struct ProductView {
    name: &'static str,
    cadence: &'static str,
    first_month: String,
    /// `None` when the bucket was not asked or did not answer.
    latest_month: Option<String>,
    variables: Vec<VariableView>,
}

#[derive(Serialize)]
struct VariableView {
    code: &'static str,
    param_id: u32,
    short: &'static str,
    long_name: &'static str,
    units: &'static str,
    grid: &'static str,
    aliases: &'static [&'static str],
    /// Whether a real key of it is known; false for ERA5 parameters of the product that no
    /// public file list confirms.
    confirmed: bool,
}

impl From<&'static Variable> for VariableView {
    fn from(v: &'static Variable) -> Self {
        Self {
            code: v.code,
            param_id: v.param_id(),
            short: v.short,
            long_name: v.long_name,
            units: v.units,
            grid: v.grid,
            aliases: v.aliases,
            confirmed: v.evidence == Evidence::Seen,
        }
    }
}

/// Runs the command.
pub async fn run(config: CatalogConfig) -> Result<ExitCode, Failure> {
    let latest = match &config.source {
        Some(source_config) => latest_months(source_config, &config.products).await,
        None => vec![None; config.products.len()],
    };
    let views: Vec<ProductView> = config
        .products
        .iter()
        .zip(latest)
        .map(|(product, latest)| ProductView {
            name: product.name(),
            cadence: product.cadence().name(),
            first_month: product.first_month().to_string(),
            latest_month: latest.map(|m| m.to_string()),
            variables: product.variables().map(VariableView::from).collect(),
        })
        .collect();
    let mut stdout = std::io::stdout().lock();
    let written = if config.json {
        serde_json::to_writer(&mut stdout, &serde_json::json!({ "products": views }))
            .map_err(std::io::Error::from)
            .and_then(|()| writeln!(stdout))
    } else {
        write_table(&mut stdout, &views)
    };
    crate::exit::written(written, "the catalog")?;
    Ok(ExitCode::Success)
}

/// The latest month folder of each product, asked of the bucket concurrently within
/// [`LOOKUP_DEADLINE`]. A failure leaves the month unknown and is said once on stderr.
async fn latest_months(config: &SourceConfig, products: &[Product]) -> Vec<Option<YearMonth>> {
    let source = Source::connect(config).await;
    let retry = RetryPolicy {
        max_attempts: 3,
        ..RetryPolicy::default()
    };
    let lookups = products
        .iter()
        .map(|product| coverage::month_folders(&source, *product, &retry, LOOKUP_DEADLINE));
    let mut first_error = None;
    let latest = join_all(lookups)
        .await
        .into_iter()
        .map(|result| match result {
            Ok(months) => months.last().copied(),
            Err(error) => {
                first_error.get_or_insert(error);
                None
            }
        })
        .collect();
    if let Some(error) = first_error {
        eprintln!("era5: note: latest months unknown: {error} (--offline skips the lookup)");
    }
    latest
}

fn write_table(out: &mut impl Write, products: &[ProductView]) -> std::io::Result<()> {
    for (index, product) in products.iter().enumerate() {
        if index > 0 {
            writeln!(out)?;
        }
        let cadence = Product::ALL
            .into_iter()
            .find(|p| p.name() == product.name)
            .map_or(product.cadence, |p| p.cadence().describe());
        writeln!(out, "{}: {cadence}", product.name)?;
        writeln!(
            out,
            "  first month {}, latest month {}",
            product.first_month,
            product.latest_month.as_deref().unwrap_or("unknown")
        )?;
        writeln!(
            out,
            "  {:<8} {:<11} {:<10} {:<22} LONG NAME",
            "CODE", "SHORT", "GRID", "UNITS"
        )?;
        for v in &product.variables {
            let short = if v.confirmed {
                v.short.to_string()
            } else {
                format!("{}?", v.short)
            };
            let aliases = if v.aliases.is_empty() {
                String::new()
            } else {
                format!(" (also {})", v.aliases.join(", "))
            };
            writeln!(
                out,
                "  {:<8} {short:<11} {:<10} {:<22} {}{aliases}",
                v.code, v.grid, v.units, v.long_name
            )?;
        }
        if product.variables.iter().any(|v| !v.confirmed) {
            writeln!(
                out,
                "  ? an ERA5 parameter of this product that the bucket is not known to hold"
            )?;
        }
    }
    Ok(())
}
