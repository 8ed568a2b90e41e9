//! The ERA5 catalog: products, their cadences, their variables and the object key layout of
//! `nsf-ncar-era5`:
//!
//! ```text
//! {product}/{YYYYMM}/{product}.{TTT}_{PPP}_{short}.{grid}.{YYYYMMDDHH}_{YYYYMMDDHH}.nc
//! ```
//!
//! The variable table [`VARIABLES`] is the one place that knows which short names exist; adding
//! a variable is adding one line there.

use std::fmt;
use std::str::FromStr;

use crate::dates::{HourStamp, YearMonth};
use crate::error::{InputError, closest_match};

/// How much time one object of a product covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Cadence {
    /// One object per day, hours `00`..`23`.
    Daily,
    /// One object per month, `01 00`..`{last} 23`.
    Monthly,
    /// Two objects per month by forecast start: `01 06`..`16 06` and `16 06`..`{next month} 01 06`.
    /// The second half sits under the month it starts in, so December's ends in January.
    HalfMonth,
    /// A single time step (`1979010100_1979010100` under `197901/`).
    Invariant,
}

/// An ERA5 product (a top-level folder of the bucket).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Product {
    /// Analysis on pressure levels, daily files.
    AnPl,
    /// Surface analysis, monthly files.
    AnSfc,
    /// Vertical integrals, monthly files.
    AnVinteg,
    /// Accumulated surface forecast fields, half-month files.
    FcSfcAccumu,
    /// Mean-rate surface forecast fields, half-month files.
    FcSfcMeanflux,
    /// Instantaneous surface forecast fields, half-month files.
    FcSfcInstan,
    /// Minimum/maximum surface forecast fields, half-month files.
    FcSfcMinmax,
    /// Time-invariant fields (land-sea mask, orography...).
    Invariant,
}

impl Product {
    /// Every product, in the order `plan` reports them.
    pub const ALL: [Product; 8] = [
        Product::AnPl,
        Product::AnSfc,
        Product::AnVinteg,
        Product::FcSfcAccumu,
        Product::FcSfcMeanflux,
        Product::FcSfcInstan,
        Product::FcSfcMinmax,
        Product::Invariant,
    ];

    /// The product's folder and file-name prefix, e.g. `e5.oper.an.sfc`.
    pub fn name(self) -> &'static str {
        match self {
            Product::AnPl => "e5.oper.an.pl",
            Product::AnSfc => "e5.oper.an.sfc",
            Product::AnVinteg => "e5.oper.an.vinteg",
            Product::FcSfcAccumu => "e5.oper.fc.sfc.accumu",
            Product::FcSfcMeanflux => "e5.oper.fc.sfc.meanflux",
            Product::FcSfcInstan => "e5.oper.fc.sfc.instan",
            Product::FcSfcMinmax => "e5.oper.fc.sfc.minmax",
            Product::Invariant => "e5.oper.invariant",
        }
    }

    /// How much time one object covers.
    pub fn cadence(self) -> Cadence {
        match self {
            Product::AnPl => Cadence::Daily,
            Product::AnSfc | Product::AnVinteg => Cadence::Monthly,
            Product::FcSfcAccumu
            | Product::FcSfcMeanflux
            | Product::FcSfcInstan
            | Product::FcSfcMinmax => Cadence::HalfMonth,
            Product::Invariant => Cadence::Invariant,
        }
    }

    /// The product's variables, from [`VARIABLES`].
    pub fn variables(self) -> impl Iterator<Item = &'static Variable> {
        VARIABLES.iter().filter(move |v| v.product == self)
    }

    /// The variable with this short name, if the product has it.
    pub fn variable(self, short: &str) -> Option<&'static Variable> {
        self.variables().find(|v| v.short == short)
    }

    /// The folder that holds the invariant fields, the only one of that product.
    pub fn invariant_month() -> YearMonth {
        YearMonth {
            year: 1979,
            month: 1,
        }
    }

    /// The time windows `[first, last]` of the objects stored under `month/`, in order.
    pub fn windows_in_month(self, month: YearMonth) -> Vec<(HourStamp, HourStamp)> {
        let first_day = month.first_day();
        match self.cadence() {
            Cadence::Daily => std::iter::successors(Some(first_day), |d| d.tomorrow().ok())
                .take_while(|d| YearMonth::of(*d) == month)
                .map(|d| (HourStamp::new(d, 0), HourStamp::new(d, 23)))
                .collect(),
            Cadence::Monthly => vec![(
                HourStamp::new(first_day, 0),
                HourStamp::new(month.last_day(), 23),
            )],
            Cadence::HalfMonth => {
                let mid = jiff::civil::date(month.year, month.month, 16);
                vec![
                    (HourStamp::new(first_day, 6), HourStamp::new(mid, 6)),
                    (
                        HourStamp::new(mid, 6),
                        HourStamp::new(month.next().first_day(), 6),
                    ),
                ]
            }
            Cadence::Invariant if month == Self::invariant_month() => {
                let stamp = HourStamp::new(first_day, 0);
                vec![(stamp, stamp)]
            }
            Cadence::Invariant => Vec::new(),
        }
    }
}

impl fmt::Display for Product {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Product {
    type Err = InputError;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        Product::ALL
            .into_iter()
            .find(|p| p.name() == value)
            .ok_or_else(|| InputError::UnknownProduct {
                value: value.to_string(),
                closest: closest_match(value, Product::ALL.iter().map(|p| p.name())),
            })
    }
}

/// One variable of one product.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Variable {
    /// The product whose files carry it.
    pub product: Product,
    /// GRIB table and parameter, `TTT_PPP`.
    pub code: &'static str,
    /// ECMWF short name, as in the key (`2t`, `msl`, `u`).
    pub short: &'static str,
    /// Grid token in the key (`ll025sc`, or `ll025uv` for winds on pressure levels).
    pub grid: &'static str,
}

const fn var(product: Product, code: &'static str, short: &'static str) -> Variable {
    Variable {
        product,
        code,
        short,
        grid: "ll025sc",
    }
}

const fn var_uv(product: Product, code: &'static str, short: &'static str) -> Variable {
    Variable {
        product,
        code,
        short,
        grid: "ll025uv",
    }
}

use Product::{
    AnPl, AnSfc, AnVinteg, FcSfcAccumu, FcSfcInstan, FcSfcMeanflux, FcSfcMinmax, Invariant,
};

/// Every known variable, one line each. Selection rejects a short name that no requested
/// product has, so a variable missing here cannot be requested: add it here.
#[rustfmt::skip]
pub const VARIABLES: &[Variable] = &[
    // Pressure levels (16).
    var(AnPl, "128_060", "pv"), var(AnPl, "128_075", "crwc"), var(AnPl, "128_076", "cswc"),
    var(AnPl, "128_129", "z"), var(AnPl, "128_130", "t"), var_uv(AnPl, "128_131", "u"),
    var_uv(AnPl, "128_132", "v"), var(AnPl, "128_133", "q"), var(AnPl, "128_135", "w"),
    var(AnPl, "128_138", "vo"), var(AnPl, "128_155", "d"), var(AnPl, "128_157", "r"),
    var(AnPl, "128_203", "o3"), var(AnPl, "128_246", "clwc"), var(AnPl, "128_247", "ciwc"),
    var(AnPl, "128_248", "cc"),
    // Surface analysis.
    var(AnSfc, "128_015", "aluvp"), var(AnSfc, "128_016", "aluvd"), var(AnSfc, "128_017", "alnip"),
    var(AnSfc, "128_018", "alnid"), var(AnSfc, "128_031", "ci"), var(AnSfc, "128_032", "asn"),
    var(AnSfc, "128_033", "rsn"), var(AnSfc, "128_034", "sstk"), var(AnSfc, "128_035", "istl1"),
    var(AnSfc, "128_036", "istl2"), var(AnSfc, "128_037", "istl3"), var(AnSfc, "128_038", "istl4"),
    var(AnSfc, "128_039", "swvl1"), var(AnSfc, "128_040", "swvl2"), var(AnSfc, "128_041", "swvl3"),
    var(AnSfc, "128_042", "swvl4"), var(AnSfc, "128_059", "cape"), var(AnSfc, "128_066", "lailv"),
    var(AnSfc, "128_067", "laihv"), var(AnSfc, "128_078", "tclw"), var(AnSfc, "128_079", "tciw"),
    var(AnSfc, "128_134", "sp"), var(AnSfc, "128_136", "tcw"), var(AnSfc, "128_137", "tcwv"),
    var(AnSfc, "128_139", "stl1"), var(AnSfc, "128_141", "sd"), var(AnSfc, "128_148", "chnk"),
    var(AnSfc, "128_151", "msl"), var(AnSfc, "128_159", "blh"), var(AnSfc, "128_164", "tcc"),
    var(AnSfc, "128_165", "10u"), var(AnSfc, "128_166", "10v"), var(AnSfc, "128_167", "2t"),
    var(AnSfc, "128_168", "2d"), var(AnSfc, "128_170", "stl2"), var(AnSfc, "128_183", "stl3"),
    var(AnSfc, "128_186", "lcc"), var(AnSfc, "128_187", "mcc"), var(AnSfc, "128_188", "hcc"),
    var(AnSfc, "128_198", "src"), var(AnSfc, "128_206", "tco3"), var(AnSfc, "128_229", "iews"),
    var(AnSfc, "128_230", "inss"), var(AnSfc, "128_231", "ishf"), var(AnSfc, "128_232", "ie"),
    var(AnSfc, "128_235", "skt"), var(AnSfc, "128_236", "stl4"), var(AnSfc, "128_238", "tsn"),
    var(AnSfc, "128_243", "fal"), var(AnSfc, "128_244", "fsr"), var(AnSfc, "128_245", "flsr"),
    var(AnSfc, "228_008", "lmlt"), var(AnSfc, "228_009", "lmld"), var(AnSfc, "228_010", "lblt"),
    var(AnSfc, "228_011", "ltlt"), var(AnSfc, "228_012", "lshf"), var(AnSfc, "228_013", "lict"),
    var(AnSfc, "228_014", "licd"), var(AnSfc, "228_089", "tcrw"), var(AnSfc, "228_090", "tcsw"),
    var(AnSfc, "228_131", "u10n"), var(AnSfc, "228_132", "v10n"), var(AnSfc, "228_246", "100u"),
    var(AnSfc, "228_247", "100v"),
    // Vertical integrals.
    var(AnVinteg, "162_053", "vima"), var(AnVinteg, "162_054", "vit"), var(AnVinteg, "162_059", "vike"),
    var(AnVinteg, "162_060", "vithe"), var(AnVinteg, "162_061", "vipie"), var(AnVinteg, "162_062", "vipile"),
    var(AnVinteg, "162_063", "vitoe"), var(AnVinteg, "162_064", "viec"), var(AnVinteg, "162_065", "vimae"),
    var(AnVinteg, "162_066", "viman"), var(AnVinteg, "162_067", "vikee"), var(AnVinteg, "162_068", "viken"),
    var(AnVinteg, "162_069", "vithee"), var(AnVinteg, "162_070", "vithen"), var(AnVinteg, "162_071", "viwve"),
    var(AnVinteg, "162_072", "viwvn"), var(AnVinteg, "162_073", "vige"), var(AnVinteg, "162_074", "vign"),
    var(AnVinteg, "162_075", "vitoee"), var(AnVinteg, "162_076", "vitoen"), var(AnVinteg, "162_077", "vioze"),
    var(AnVinteg, "162_078", "viozn"), var(AnVinteg, "162_079", "vilwd"), var(AnVinteg, "162_080", "viiwd"),
    var(AnVinteg, "162_081", "vimad"), var(AnVinteg, "162_082", "viked"), var(AnVinteg, "162_083", "vithed"),
    var(AnVinteg, "162_084", "viwvd"), var(AnVinteg, "162_085", "vigd"), var(AnVinteg, "162_086", "vitoed"),
    var(AnVinteg, "162_087", "viozd"), var(AnVinteg, "162_088", "vilwe"), var(AnVinteg, "162_089", "vilwn"),
    var(AnVinteg, "162_090", "viiwe"), var(AnVinteg, "162_091", "viiwn"),
    // Accumulated forecast fields.
    var(FcSfcAccumu, "128_008", "sro"), var(FcSfcAccumu, "128_009", "ssro"), var(FcSfcAccumu, "128_044", "es"),
    var(FcSfcAccumu, "128_045", "smlt"), var(FcSfcAccumu, "128_050", "lspf"), var(FcSfcAccumu, "128_142", "lsp"),
    var(FcSfcAccumu, "128_143", "cp"), var(FcSfcAccumu, "128_144", "sf"), var(FcSfcAccumu, "128_145", "bld"),
    var(FcSfcAccumu, "128_146", "sshf"), var(FcSfcAccumu, "128_147", "slhf"), var(FcSfcAccumu, "128_169", "ssrd"),
    var(FcSfcAccumu, "128_175", "strd"), var(FcSfcAccumu, "128_176", "ssr"), var(FcSfcAccumu, "128_177", "str"),
    var(FcSfcAccumu, "128_178", "tsr"), var(FcSfcAccumu, "128_179", "ttr"), var(FcSfcAccumu, "128_180", "ewss"),
    var(FcSfcAccumu, "128_181", "nsss"), var(FcSfcAccumu, "128_182", "e"), var(FcSfcAccumu, "128_189", "sund"),
    var(FcSfcAccumu, "128_195", "lgws"), var(FcSfcAccumu, "128_196", "mgws"), var(FcSfcAccumu, "128_197", "gwd"),
    var(FcSfcAccumu, "128_205", "ro"), var(FcSfcAccumu, "128_208", "tsrc"), var(FcSfcAccumu, "128_209", "ttrc"),
    var(FcSfcAccumu, "128_210", "ssrc"), var(FcSfcAccumu, "128_211", "strc"), var(FcSfcAccumu, "128_212", "tisr"),
    var(FcSfcAccumu, "128_213", "vimd"), var(FcSfcAccumu, "128_228", "tp"), var(FcSfcAccumu, "128_239", "csf"),
    var(FcSfcAccumu, "128_240", "lsf"), var(FcSfcAccumu, "228_021", "fdir"), var(FcSfcAccumu, "228_022", "cdir"),
    var(FcSfcAccumu, "228_129", "ssrdc"), var(FcSfcAccumu, "228_130", "strdc"), var(FcSfcAccumu, "228_251", "pev"),
    // Mean-rate forecast fields.
    var(FcSfcMeanflux, "235_029", "mlspr"), var(FcSfcMeanflux, "235_030", "mcpr"), var(FcSfcMeanflux, "235_031", "msr"),
    var(FcSfcMeanflux, "235_032", "mbld"), var(FcSfcMeanflux, "235_033", "msshf"), var(FcSfcMeanflux, "235_034", "mslhf"),
    var(FcSfcMeanflux, "235_035", "msdwswrf"), var(FcSfcMeanflux, "235_036", "msdwlwrf"), var(FcSfcMeanflux, "235_037", "msnswrf"),
    var(FcSfcMeanflux, "235_038", "msnlwrf"), var(FcSfcMeanflux, "235_039", "mtnswrf"), var(FcSfcMeanflux, "235_040", "mtnlwrf"),
    var(FcSfcMeanflux, "235_041", "metss"), var(FcSfcMeanflux, "235_042", "mntss"), var(FcSfcMeanflux, "235_043", "mer"),
    var(FcSfcMeanflux, "235_044", "msmr"), var(FcSfcMeanflux, "235_045", "mlspf"), var(FcSfcMeanflux, "235_046", "mgwd"),
    var(FcSfcMeanflux, "235_047", "mgws"), var(FcSfcMeanflux, "235_048", "mror"), var(FcSfcMeanflux, "235_049", "mtdwswrf"),
    var(FcSfcMeanflux, "235_050", "mtnswrfcs"), var(FcSfcMeanflux, "235_051", "mtnlwrfcs"), var(FcSfcMeanflux, "235_052", "msnswrfcs"),
    var(FcSfcMeanflux, "235_053", "msnlwrfcs"), var(FcSfcMeanflux, "235_054", "mvimd"), var(FcSfcMeanflux, "235_055", "mtpr"),
    var(FcSfcMeanflux, "235_056", "mlssr"), var(FcSfcMeanflux, "235_057", "mcsr"), var(FcSfcMeanflux, "235_058", "mpr"),
    var(FcSfcMeanflux, "235_068", "msdwswrfcs"), var(FcSfcMeanflux, "235_069", "msdwlwrfcs"), var(FcSfcMeanflux, "235_070", "mper"),
    var(FcSfcMeanflux, "235_020", "msror"), var(FcSfcMeanflux, "235_021", "mssror"),
    // Instantaneous forecast fields.
    var(FcSfcInstan, "228_001", "cin"), var(FcSfcInstan, "228_003", "zust"), var(FcSfcInstan, "228_015", "dndzn"),
    var(FcSfcInstan, "228_016", "dndza"), var(FcSfcInstan, "228_023", "cbh"), var(FcSfcInstan, "228_029", "i10fg"),
    var(FcSfcInstan, "228_088", "tcslw"), var(FcSfcInstan, "228_217", "ilspf"), var(FcSfcInstan, "228_218", "crr"),
    var(FcSfcInstan, "228_219", "lsrr"), var(FcSfcInstan, "228_220", "csfr"), var(FcSfcInstan, "228_221", "lssfr"),
    // Minimum and maximum forecast fields.
    var(FcSfcMinmax, "128_049", "10fg"), var(FcSfcMinmax, "128_201", "mx2t"), var(FcSfcMinmax, "128_202", "mn2t"),
    var(FcSfcMinmax, "228_226", "mxtpr"), var(FcSfcMinmax, "228_227", "mntpr"),
    // Invariant fields.
    var(Invariant, "128_026", "cl"), var(Invariant, "128_027", "cvl"), var(Invariant, "128_028", "cvh"),
    var(Invariant, "128_029", "tvl"), var(Invariant, "128_030", "tvh"), var(Invariant, "128_043", "slt"),
    var(Invariant, "128_074", "sdfor"), var(Invariant, "128_129", "z"), var(Invariant, "128_160", "sdor"),
    var(Invariant, "128_161", "isor"), var(Invariant, "128_162", "anor"), var(Invariant, "128_163", "slor"),
    var(Invariant, "128_172", "lsm"), var(Invariant, "228_007", "dl"),
];

impl Variable {
    /// The object key of this variable for the window `[first, last]`.
    pub fn key(&self, first: HourStamp, last: HourStamp) -> String {
        ObjectKey {
            product: self.product,
            month: YearMonth::of(first.date),
            code: self.code.to_string(),
            short: self.short.to_string(),
            grid: self.grid.to_string(),
            first,
            last,
        }
        .to_string()
    }
}

/// A parsed ERA5 object key.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ObjectKey {
    /// The product folder and file prefix.
    pub product: Product,
    /// The month folder the object sits under (the month of `first`).
    pub month: YearMonth,
    /// GRIB table and parameter, `TTT_PPP`.
    pub code: String,
    /// Variable short name.
    pub short: String,
    /// Grid token.
    pub grid: String,
    /// First hour covered.
    pub first: HourStamp,
    /// Last hour covered (inclusive).
    pub last: HourStamp,
}

impl ObjectKey {
    /// Parses a key of the bucket layout. Anything else (`index.html`, folder markers, stray
    /// files, keys that try to climb out of their folder) gives `None`.
    pub fn parse(key: &str) -> Option<Self> {
        let mut segments = key.split('/');
        let (product_dir, month_dir, file) = (segments.next()?, segments.next()?, segments.next()?);
        if segments.next().is_some() {
            return None;
        }
        let product = Product::ALL.into_iter().find(|p| p.name() == product_dir)?;
        let month = YearMonth::parse_compact(month_dir)?;
        let rest = file
            .strip_prefix(product.name())?
            .strip_prefix('.')?
            .strip_suffix(".nc")?;
        // rest = TTT_PPP_short.grid.START_END
        let mut fields = rest.rsplitn(3, '.');
        let (window, grid, head) = (fields.next()?, fields.next()?, fields.next()?);
        let (first, last) = window.split_once('_')?;
        let (first, last) = (
            HourStamp::parse_compact(first)?,
            HourStamp::parse_compact(last)?,
        );
        let mut head_fields = head.splitn(3, '_');
        let (table, param, short) = (
            head_fields.next()?,
            head_fields.next()?,
            head_fields.next()?,
        );
        let is_code = |s: &str| s.len() == 3 && s.bytes().all(|b| b.is_ascii_digit());
        let is_token =
            |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !is_code(table) || !is_code(param) || !is_token(short) || !is_token(grid) {
            return None;
        }
        if last < first || YearMonth::of(first.date) != month {
            return None;
        }
        Some(Self {
            product,
            month,
            code: format!("{table}_{param}"),
            short: short.to_string(),
            grid: grid.to_string(),
            first,
            last,
        })
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let product = self.product.name();
        write!(
            f,
            "{product}/{}/{product}.{}_{}.{}.{}_{}.nc",
            self.month.compact(),
            self.code,
            self.short,
            self.grid,
            self.first.compact(),
            self.last.compact()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jiff::civil::date;

    #[test]
    fn documented_example_keys_parse_and_round_trip() {
        for key in [
            "e5.oper.an.pl/202201/e5.oper.an.pl.128_131_u.ll025uv.2022010100_2022010123.nc",
            "e5.oper.an.sfc/202201/e5.oper.an.sfc.128_167_2t.ll025sc.2022010100_2022013123.nc",
            "e5.oper.an.vinteg/201012/e5.oper.an.vinteg.162_071_viwve.ll025sc.2010120100_2010123123.nc",
            "e5.oper.fc.sfc.accumu/202501/e5.oper.fc.sfc.accumu.128_143_cp.ll025sc.2025010106_2025011606.nc",
            "e5.oper.invariant/197901/e5.oper.invariant.128_172_lsm.ll025sc.1979010100_1979010100.nc",
        ] {
            let parsed = ObjectKey::parse(key).unwrap_or_else(|| panic!("{key} should parse"));
            assert_eq!(parsed.to_string(), key);
        }
    }

    #[test]
    fn junk_keys_are_ignored() {
        for key in [
            "index.html",
            "e5.oper.an.sfc/",
            "e5.oper.an.sfc/202201/",
            "e5.oper.an.sfc/202201/README.txt",
            "e5.oper.an.sfc/202201/e5.oper.an.sfc.128_167_2t.ll025sc.2022010100_2022013123.nc.md5",
            "e5.oper.an.sfc/202201/e5.oper.an.pl.128_167_2t.ll025sc.2022010100_2022013123.nc",
            "e5.oper.an.sfc/202202/e5.oper.an.sfc.128_167_2t.ll025sc.2022010100_2022013123.nc",
            "e5.oper.an.sfc/202201/e5.oper.an.sfc.128_167_2t.ll025sc.2022013123_2022010100.nc",
            "e5.oper.an.sfc/202201/../../etc/e5.oper.an.sfc.128_167_2t.ll025sc.2022010100_2022013123.nc",
            "e5.oper.an.sfc/202201/x/e5.oper.an.sfc.128_167_2t.ll025sc.2022010100_2022013123.nc",
            "e5.oper.an.sfc/202201/e5.oper.an.sfc.128_167_2/t.ll025sc.2022010100_2022013123.nc",
            "e5.oper.an.sfc/202213/e5.oper.an.sfc.128_167_2t.ll025sc.2022130100_2022133123.nc",
        ] {
            assert!(ObjectKey::parse(key).is_none(), "{key} should be ignored");
        }
    }

    #[test]
    fn half_month_windows_cross_into_the_next_month() {
        let windows = Product::FcSfcAccumu.windows_in_month(YearMonth {
            year: 2021,
            month: 12,
        });
        assert_eq!(windows.len(), 2);
        assert_eq!(windows[0].0.compact(), "2021120106");
        assert_eq!(windows[0].1.compact(), "2021121606");
        assert_eq!(windows[1].0.compact(), "2021121606");
        assert_eq!(windows[1].1.compact(), "2022010106");
    }

    #[test]
    fn daily_and_monthly_windows_follow_the_calendar() {
        let feb_leap = YearMonth {
            year: 2024,
            month: 2,
        };
        assert_eq!(Product::AnPl.windows_in_month(feb_leap).len(), 29);
        assert_eq!(
            Product::AnPl
                .windows_in_month(YearMonth {
                    year: 2023,
                    month: 2
                })
                .len(),
            28
        );
        assert_eq!(
            Product::AnPl
                .windows_in_month(YearMonth {
                    year: 2022,
                    month: 4
                })
                .len(),
            30
        );
        let monthly = Product::AnSfc.windows_in_month(feb_leap);
        assert_eq!(
            monthly,
            vec![(
                HourStamp::new(date(2024, 2, 1), 0),
                HourStamp::new(date(2024, 2, 29), 23)
            )]
        );
        assert!(Product::Invariant.windows_in_month(feb_leap).is_empty());
        assert_eq!(
            Product::Invariant
                .windows_in_month(Product::invariant_month())
                .len(),
            1
        );
    }

    #[test]
    fn every_product_has_variables_and_short_names_are_unique_per_product() {
        for product in Product::ALL {
            let shorts: Vec<_> = product.variables().map(|v| v.short).collect();
            assert!(!shorts.is_empty(), "{product} has no variables");
            let mut unique = shorts.clone();
            unique.sort();
            unique.dedup();
            assert_eq!(unique.len(), shorts.len(), "{product} repeats a short name");
        }
        assert_eq!(Product::AnPl.variables().count(), 16);
    }

    #[test]
    fn unknown_product_suggests_the_closest() {
        let err = "e5.oper.an.sf".parse::<Product>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "unknown product `e5.oper.an.sf`; did you mean `e5.oper.an.sfc`?"
        );
    }
}
