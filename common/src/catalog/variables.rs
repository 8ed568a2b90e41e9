//! The variable table: every ERA5 variable of every product of `nsf-ncar-era5`, one line each,
//! with the code and short name NCAR puts in its keys, the CDS long name, the units and the
//! grid.
//!
//! Sources:
//! - ECMWF, "ERA5: data documentation", tables 1–9 (parameter ids, short names, long names,
//!   units), and the Copernicus Climate Data Store variable names (the long names here);
//! - NCAR's file names in `nsf-ncar-era5` (and its twin, GDEX dataset d633000): NCAR names a
//!   file `{product}.{TTT}_{PPP}_{short}.{grid}.{start}_{end}.nc`, with the ECMWF GRIB table
//!   `TTT` and parameter `PPP`, and a short name that is ECMWF's except where noted in
//!   [`Variable::aliases`] (NCAR writes `sstk` for ECMWF's `sst`);
//! - the meanflux table (235_xxx, 39 entries) as corrected in issue 11.
//!
//! Every entry marked [`Evidence::Seen`] has a real key in `real_keys.txt`, which a test holds
//! the table against. Entries marked [`Evidence::Unconfirmed`] are ERA5 parameters of that
//! product whose presence in the bucket no public file list confirms; they can be requested
//! (a request that matches nothing warns), and `ERA5_LIVE=1` checks them against the real
//! bucket. Removed for want of evidence: `228_008 lmlt` and `228_009 lmld` (absent from complete
//! `e5.oper.an.sfc` file lists), `128_189 sund` (an operational IFS field, not ERA5), and the
//! non-existent `mgws`/`mpr` mean rates of an earlier table.

use super::Product::{
    AnPl, AnSfc, AnVinteg, FcSfcAccumu, FcSfcInstan, FcSfcMeanflux, FcSfcMinmax, Invariant,
};
use super::{Evidence, Product, Variable};

/// The 0.25° regular grid, scalar fields.
pub const GRID_LL025SC: &str = "ll025sc";
/// The 0.25° regular grid, wind components on pressure levels.
pub const GRID_LL025UV: &str = "ll025uv";
/// The native reduced Gaussian grid (N320), scalar fields.
pub const GRID_REGN320SC: &str = "regn320sc";

/// A variable on the 0.25° scalar grid, seen in the bucket.
const fn var(
    product: Product,
    code: &'static str,
    short: &'static str,
    long_name: &'static str,
    units: &'static str,
) -> Variable {
    Variable {
        product,
        code,
        short,
        long_name,
        units,
        grid: GRID_LL025SC,
        aliases: &[],
        evidence: Evidence::Seen,
    }
}

impl Variable {
    const fn grid(self, grid: &'static str) -> Self {
        Self { grid, ..self }
    }

    const fn alias(self, aliases: &'static [&'static str]) -> Self {
        Self { aliases, ..self }
    }

    const fn unconfirmed(self) -> Self {
        Self {
            evidence: Evidence::Unconfirmed,
            ..self
        }
    }
}

/// Every known variable. Selection accepts only these (by short name, alias, CDS long name or
/// parameter id); keys of the layout that are not here are still mirrored when no `--var` is
/// given, and `plan` counts them.
#[rustfmt::skip]
pub const VARIABLES: &[Variable] = &[
    // Pressure levels (16), daily files.
    var(AnPl, "128_060", "pv", "potential_vorticity", "K m2 kg-1 s-1"),
    var(AnPl, "128_075", "crwc", "specific_rain_water_content", "kg kg-1"),
    var(AnPl, "128_076", "cswc", "specific_snow_water_content", "kg kg-1"),
    var(AnPl, "128_129", "z", "geopotential", "m2 s-2"),
    var(AnPl, "128_130", "t", "temperature", "K"),
    var(AnPl, "128_131", "u", "u_component_of_wind", "m s-1").grid(GRID_LL025UV),
    var(AnPl, "128_132", "v", "v_component_of_wind", "m s-1").grid(GRID_LL025UV),
    var(AnPl, "128_133", "q", "specific_humidity", "kg kg-1"),
    var(AnPl, "128_135", "w", "vertical_velocity", "Pa s-1"),
    var(AnPl, "128_138", "vo", "vorticity", "s-1"),
    var(AnPl, "128_155", "d", "divergence", "s-1"),
    var(AnPl, "128_157", "r", "relative_humidity", "%"),
    var(AnPl, "128_203", "o3", "ozone_mass_mixing_ratio", "kg kg-1"),
    var(AnPl, "128_246", "clwc", "specific_cloud_liquid_water_content", "kg kg-1"),
    var(AnPl, "128_247", "ciwc", "specific_cloud_ice_water_content", "kg kg-1"),
    var(AnPl, "128_248", "cc", "fraction_of_cloud_cover", "(0 - 1)"),

    // Surface analysis, monthly files.
    var(AnSfc, "128_015", "aluvp", "uv_visible_albedo_for_direct_radiation", "(0 - 1)"),
    var(AnSfc, "128_016", "aluvd", "uv_visible_albedo_for_diffuse_radiation", "(0 - 1)"),
    var(AnSfc, "128_017", "alnip", "near_ir_albedo_for_direct_radiation", "(0 - 1)"),
    var(AnSfc, "128_018", "alnid", "near_ir_albedo_for_diffuse_radiation", "(0 - 1)"),
    var(AnSfc, "128_031", "ci", "sea_ice_cover", "(0 - 1)").alias(&["siconc"]),
    var(AnSfc, "128_032", "asn", "snow_albedo", "(0 - 1)"),
    var(AnSfc, "128_033", "rsn", "snow_density", "kg m-3"),
    var(AnSfc, "128_034", "sstk", "sea_surface_temperature", "K").alias(&["sst"]),
    var(AnSfc, "128_035", "istl1", "ice_temperature_layer_1", "K"),
    var(AnSfc, "128_036", "istl2", "ice_temperature_layer_2", "K"),
    var(AnSfc, "128_037", "istl3", "ice_temperature_layer_3", "K"),
    var(AnSfc, "128_038", "istl4", "ice_temperature_layer_4", "K"),
    var(AnSfc, "128_039", "swvl1", "volumetric_soil_water_layer_1", "m3 m-3"),
    var(AnSfc, "128_040", "swvl2", "volumetric_soil_water_layer_2", "m3 m-3"),
    var(AnSfc, "128_041", "swvl3", "volumetric_soil_water_layer_3", "m3 m-3"),
    var(AnSfc, "128_042", "swvl4", "volumetric_soil_water_layer_4", "m3 m-3"),
    var(AnSfc, "128_059", "cape", "convective_available_potential_energy", "J kg-1"),
    var(AnSfc, "128_066", "lailv", "leaf_area_index_low_vegetation", "m2 m-2"),
    var(AnSfc, "128_067", "laihv", "leaf_area_index_high_vegetation", "m2 m-2"),
    var(AnSfc, "128_078", "tclw", "total_column_cloud_liquid_water", "kg m-2"),
    var(AnSfc, "128_079", "tciw", "total_column_cloud_ice_water", "kg m-2"),
    var(AnSfc, "128_134", "sp", "surface_pressure", "Pa"),
    var(AnSfc, "128_136", "tcw", "total_column_water", "kg m-2"),
    var(AnSfc, "128_137", "tcwv", "total_column_water_vapour", "kg m-2"),
    var(AnSfc, "128_139", "stl1", "soil_temperature_level_1", "K"),
    var(AnSfc, "128_141", "sd", "snow_depth", "m of water equivalent"),
    var(AnSfc, "128_148", "chnk", "charnock", "~"),
    var(AnSfc, "128_151", "msl", "mean_sea_level_pressure", "Pa"),
    var(AnSfc, "128_159", "blh", "boundary_layer_height", "m"),
    var(AnSfc, "128_164", "tcc", "total_cloud_cover", "(0 - 1)"),
    var(AnSfc, "128_165", "10u", "10m_u_component_of_wind", "m s-1").alias(&["u10"]),
    var(AnSfc, "128_166", "10v", "10m_v_component_of_wind", "m s-1").alias(&["v10"]),
    var(AnSfc, "128_167", "2t", "2m_temperature", "K").alias(&["t2m"]),
    var(AnSfc, "128_168", "2d", "2m_dewpoint_temperature", "K").alias(&["d2m"]),
    var(AnSfc, "128_170", "stl2", "soil_temperature_level_2", "K"),
    var(AnSfc, "128_183", "stl3", "soil_temperature_level_3", "K"),
    var(AnSfc, "128_186", "lcc", "low_cloud_cover", "(0 - 1)"),
    var(AnSfc, "128_187", "mcc", "medium_cloud_cover", "(0 - 1)"),
    var(AnSfc, "128_188", "hcc", "high_cloud_cover", "(0 - 1)"),
    var(AnSfc, "128_198", "src", "skin_reservoir_content", "m of water equivalent"),
    var(AnSfc, "128_206", "tco3", "total_column_ozone", "kg m-2"),
    var(AnSfc, "128_229", "iews", "instantaneous_eastward_turbulent_surface_stress", "N m-2"),
    var(AnSfc, "128_230", "inss", "instantaneous_northward_turbulent_surface_stress", "N m-2"),
    var(AnSfc, "128_231", "ishf", "instantaneous_surface_sensible_heat_flux", "W m-2"),
    var(AnSfc, "128_232", "ie", "instantaneous_moisture_flux", "kg m-2 s-1"),
    var(AnSfc, "128_235", "skt", "skin_temperature", "K"),
    var(AnSfc, "128_236", "stl4", "soil_temperature_level_4", "K"),
    var(AnSfc, "128_238", "tsn", "temperature_of_snow_layer", "K"),
    var(AnSfc, "128_243", "fal", "forecast_albedo", "(0 - 1)"),
    var(AnSfc, "128_244", "fsr", "forecast_surface_roughness", "m"),
    var(AnSfc, "128_245", "flsr", "forecast_logarithm_of_surface_roughness_for_heat", "~"),
    var(AnSfc, "228_010", "lblt", "lake_bottom_temperature", "K"),
    var(AnSfc, "228_011", "ltlt", "lake_total_layer_temperature", "K"),
    var(AnSfc, "228_012", "lshf", "lake_shape_factor", "dimensionless"),
    var(AnSfc, "228_013", "lict", "lake_ice_temperature", "K"),
    var(AnSfc, "228_014", "licd", "lake_ice_depth", "m"),
    var(AnSfc, "228_089", "tcrw", "total_column_rain_water", "kg m-2"),
    var(AnSfc, "228_090", "tcsw", "total_column_snow_water", "kg m-2"),
    var(AnSfc, "228_131", "u10n", "10m_u_component_of_neutral_wind", "m s-1"),
    var(AnSfc, "228_132", "v10n", "10m_v_component_of_neutral_wind", "m s-1"),
    var(AnSfc, "228_246", "100u", "100m_u_component_of_wind", "m s-1").alias(&["u100"]),
    var(AnSfc, "228_247", "100v", "100m_v_component_of_wind", "m s-1").alias(&["v100"]),

    // Vertical integrals, monthly files.
    var(AnVinteg, "162_053", "vima", "vertical_integral_of_mass_of_atmosphere", "kg m-2"),
    var(AnVinteg, "162_054", "vit", "vertical_integral_of_temperature", "K kg m-2"),
    var(AnVinteg, "162_059", "vike", "vertical_integral_of_kinetic_energy", "J m-2"),
    var(AnVinteg, "162_060", "vithe", "vertical_integral_of_thermal_energy", "J m-2"),
    var(AnVinteg, "162_061", "vipie", "vertical_integral_of_potential_and_internal_energy", "J m-2"),
    var(AnVinteg, "162_062", "vipile", "vertical_integral_of_potential_internal_and_latent_energy", "J m-2"),
    var(AnVinteg, "162_063", "vitoe", "vertical_integral_of_total_energy", "J m-2"),
    var(AnVinteg, "162_064", "viec", "vertical_integral_of_energy_conversion", "W m-2"),
    var(AnVinteg, "162_065", "vimae", "vertical_integral_of_eastward_mass_flux", "kg m-1 s-1"),
    var(AnVinteg, "162_066", "viman", "vertical_integral_of_northward_mass_flux", "kg m-1 s-1"),
    var(AnVinteg, "162_067", "vikee", "vertical_integral_of_eastward_kinetic_energy_flux", "W m-1"),
    var(AnVinteg, "162_068", "viken", "vertical_integral_of_northward_kinetic_energy_flux", "W m-1"),
    var(AnVinteg, "162_069", "vithee", "vertical_integral_of_eastward_heat_flux", "W m-1"),
    var(AnVinteg, "162_070", "vithen", "vertical_integral_of_northward_heat_flux", "W m-1"),
    var(AnVinteg, "162_071", "viwve", "vertical_integral_of_eastward_water_vapour_flux", "kg m-1 s-1"),
    var(AnVinteg, "162_072", "viwvn", "vertical_integral_of_northward_water_vapour_flux", "kg m-1 s-1"),
    var(AnVinteg, "162_073", "vige", "vertical_integral_of_eastward_geopotential_flux", "W m-1"),
    var(AnVinteg, "162_074", "vign", "vertical_integral_of_northward_geopotential_flux", "W m-1"),
    var(AnVinteg, "162_075", "vitoee", "vertical_integral_of_eastward_total_energy_flux", "W m-1"),
    var(AnVinteg, "162_076", "vitoen", "vertical_integral_of_northward_total_energy_flux", "W m-1"),
    var(AnVinteg, "162_077", "vioze", "vertical_integral_of_eastward_ozone_flux", "kg m-1 s-1"),
    var(AnVinteg, "162_078", "viozn", "vertical_integral_of_northward_ozone_flux", "kg m-1 s-1"),
    var(AnVinteg, "162_079", "vilwd", "vertical_integral_of_divergence_of_cloud_liquid_water_flux", "kg m-2 s-1"),
    var(AnVinteg, "162_080", "viiwd", "vertical_integral_of_divergence_of_cloud_frozen_water_flux", "kg m-2 s-1"),
    var(AnVinteg, "162_081", "vimad", "vertical_integral_of_divergence_of_mass_flux", "kg m-2 s-1"),
    var(AnVinteg, "162_082", "viked", "vertical_integral_of_divergence_of_kinetic_energy_flux", "W m-2"),
    var(AnVinteg, "162_083", "vithed", "vertical_integral_of_divergence_of_thermal_energy_flux", "W m-2"),
    var(AnVinteg, "162_084", "viwvd", "vertical_integral_of_divergence_of_moisture_flux", "kg m-2 s-1"),
    var(AnVinteg, "162_085", "vigd", "vertical_integral_of_divergence_of_geopotential_flux", "W m-2"),
    var(AnVinteg, "162_086", "vitoed", "vertical_integral_of_divergence_of_total_energy_flux", "W m-2"),
    var(AnVinteg, "162_087", "viozd", "vertical_integral_of_divergence_of_ozone_flux", "kg m-2 s-1"),
    var(AnVinteg, "162_088", "vilwe", "vertical_integral_of_eastward_cloud_liquid_water_flux", "kg m-1 s-1"),
    var(AnVinteg, "162_089", "vilwn", "vertical_integral_of_northward_cloud_liquid_water_flux", "kg m-1 s-1"),
    var(AnVinteg, "162_090", "viiwe", "vertical_integral_of_eastward_cloud_frozen_water_flux", "kg m-1 s-1"),
    var(AnVinteg, "162_091", "viiwn", "vertical_integral_of_northward_cloud_frozen_water_flux", "kg m-1 s-1"),

    // Accumulated forecast fields, half-month files.
    var(FcSfcAccumu, "128_008", "sro", "surface_runoff", "m"),
    var(FcSfcAccumu, "128_009", "ssro", "sub_surface_runoff", "m"),
    var(FcSfcAccumu, "128_044", "es", "snow_evaporation", "m of water equivalent"),
    var(FcSfcAccumu, "128_045", "smlt", "snowmelt", "m of water equivalent"),
    var(FcSfcAccumu, "128_050", "lspf", "large_scale_precipitation_fraction", "s"),
    var(FcSfcAccumu, "128_057", "uvb", "downward_uv_radiation_at_the_surface", "J m-2"),
    var(FcSfcAccumu, "128_142", "lsp", "large_scale_precipitation", "m"),
    var(FcSfcAccumu, "128_143", "cp", "convective_precipitation", "m"),
    var(FcSfcAccumu, "128_144", "sf", "snowfall", "m of water equivalent"),
    var(FcSfcAccumu, "128_145", "bld", "boundary_layer_dissipation", "J m-2"),
    var(FcSfcAccumu, "128_146", "sshf", "surface_sensible_heat_flux", "J m-2"),
    var(FcSfcAccumu, "128_147", "slhf", "surface_latent_heat_flux", "J m-2"),
    var(FcSfcAccumu, "128_169", "ssrd", "surface_solar_radiation_downwards", "J m-2"),
    var(FcSfcAccumu, "128_175", "strd", "surface_thermal_radiation_downwards", "J m-2"),
    var(FcSfcAccumu, "128_176", "ssr", "surface_net_solar_radiation", "J m-2"),
    var(FcSfcAccumu, "128_177", "str", "surface_net_thermal_radiation", "J m-2"),
    var(FcSfcAccumu, "128_178", "tsr", "top_net_solar_radiation", "J m-2"),
    var(FcSfcAccumu, "128_179", "ttr", "top_net_thermal_radiation", "J m-2"),
    var(FcSfcAccumu, "128_180", "ewss", "eastward_turbulent_surface_stress", "N m-2 s"),
    var(FcSfcAccumu, "128_181", "nsss", "northward_turbulent_surface_stress", "N m-2 s"),
    var(FcSfcAccumu, "128_182", "e", "evaporation", "m of water equivalent"),
    var(FcSfcAccumu, "128_195", "lgws", "eastward_gravity_wave_surface_stress", "N m-2 s"),
    var(FcSfcAccumu, "128_196", "mgws", "northward_gravity_wave_surface_stress", "N m-2 s"),
    var(FcSfcAccumu, "128_197", "gwd", "gravity_wave_dissipation", "J m-2"),
    var(FcSfcAccumu, "128_205", "ro", "runoff", "m"),
    var(FcSfcAccumu, "128_208", "tsrc", "top_net_solar_radiation_clear_sky", "J m-2"),
    var(FcSfcAccumu, "128_209", "ttrc", "top_net_thermal_radiation_clear_sky", "J m-2"),
    var(FcSfcAccumu, "128_210", "ssrc", "surface_net_solar_radiation_clear_sky", "J m-2"),
    var(FcSfcAccumu, "128_211", "strc", "surface_net_thermal_radiation_clear_sky", "J m-2"),
    var(FcSfcAccumu, "128_212", "tisr", "toa_incident_solar_radiation", "J m-2"),
    var(FcSfcAccumu, "128_213", "vimd", "vertically_integrated_moisture_divergence", "kg m-2"),
    var(FcSfcAccumu, "128_228", "tp", "total_precipitation", "m"),
    var(FcSfcAccumu, "128_239", "csf", "convective_snowfall", "m of water equivalent"),
    var(FcSfcAccumu, "128_240", "lsf", "large_scale_snowfall", "m of water equivalent"),
    var(FcSfcAccumu, "228_021", "fdir", "total_sky_direct_solar_radiation_at_surface", "J m-2"),
    var(FcSfcAccumu, "228_022", "cdir", "clear_sky_direct_solar_radiation_at_surface", "J m-2"),
    var(FcSfcAccumu, "228_129", "ssrdc", "surface_solar_radiation_downward_clear_sky", "J m-2"),
    var(FcSfcAccumu, "228_130", "strdc", "surface_thermal_radiation_downward_clear_sky", "J m-2"),
    var(FcSfcAccumu, "228_251", "pev", "potential_evaporation", "m"),

    // Mean-rate forecast fields (39), half-month files.
    var(FcSfcMeanflux, "235_020", "msror", "mean_surface_runoff_rate", "kg m-2 s-1"),
    var(FcSfcMeanflux, "235_021", "mssror", "mean_sub_surface_runoff_rate", "kg m-2 s-1"),
    var(FcSfcMeanflux, "235_023", "mser", "mean_snow_evaporation_rate", "kg m-2 s-1"),
    var(FcSfcMeanflux, "235_024", "msmr", "mean_snowmelt_rate", "kg m-2 s-1"),
    var(FcSfcMeanflux, "235_026", "mlspf", "mean_large_scale_precipitation_fraction", "Proportion"),
    var(FcSfcMeanflux, "235_027", "msdwuvrf", "mean_surface_downward_uv_radiation_flux", "W m-2"),
    var(FcSfcMeanflux, "235_029", "mlspr", "mean_large_scale_precipitation_rate", "kg m-2 s-1"),
    var(FcSfcMeanflux, "235_030", "mcpr", "mean_convective_precipitation_rate", "kg m-2 s-1"),
    var(FcSfcMeanflux, "235_031", "msr", "mean_snowfall_rate", "kg m-2 s-1"),
    var(FcSfcMeanflux, "235_032", "mbld", "mean_boundary_layer_dissipation", "W m-2"),
    var(FcSfcMeanflux, "235_033", "msshf", "mean_surface_sensible_heat_flux", "W m-2"),
    var(FcSfcMeanflux, "235_034", "mslhf", "mean_surface_latent_heat_flux", "W m-2"),
    var(FcSfcMeanflux, "235_035", "msdwswrf", "mean_surface_downward_short_wave_radiation_flux", "W m-2"),
    var(FcSfcMeanflux, "235_036", "msdwlwrf", "mean_surface_downward_long_wave_radiation_flux", "W m-2"),
    var(FcSfcMeanflux, "235_037", "msnswrf", "mean_surface_net_short_wave_radiation_flux", "W m-2"),
    var(FcSfcMeanflux, "235_038", "msnlwrf", "mean_surface_net_long_wave_radiation_flux", "W m-2"),
    var(FcSfcMeanflux, "235_039", "mtnswrf", "mean_top_net_short_wave_radiation_flux", "W m-2"),
    var(FcSfcMeanflux, "235_040", "mtnlwrf", "mean_top_net_long_wave_radiation_flux", "W m-2"),
    var(FcSfcMeanflux, "235_041", "metss", "mean_eastward_turbulent_surface_stress", "N m-2"),
    var(FcSfcMeanflux, "235_042", "mntss", "mean_northward_turbulent_surface_stress", "N m-2"),
    var(FcSfcMeanflux, "235_043", "mer", "mean_evaporation_rate", "kg m-2 s-1"),
    var(FcSfcMeanflux, "235_045", "megwss", "mean_eastward_gravity_wave_surface_stress", "N m-2"),
    var(FcSfcMeanflux, "235_046", "mngwss", "mean_northward_gravity_wave_surface_stress", "N m-2"),
    var(FcSfcMeanflux, "235_047", "mgwd", "mean_gravity_wave_dissipation", "W m-2"),
    var(FcSfcMeanflux, "235_048", "mror", "mean_runoff_rate", "kg m-2 s-1"),
    var(FcSfcMeanflux, "235_049", "mtnswrfcs", "mean_top_net_short_wave_radiation_flux_clear_sky", "W m-2"),
    var(FcSfcMeanflux, "235_050", "mtnlwrfcs", "mean_top_net_long_wave_radiation_flux_clear_sky", "W m-2"),
    var(FcSfcMeanflux, "235_051", "msnswrfcs", "mean_surface_net_short_wave_radiation_flux_clear_sky", "W m-2"),
    var(FcSfcMeanflux, "235_052", "msnlwrfcs", "mean_surface_net_long_wave_radiation_flux_clear_sky", "W m-2"),
    var(FcSfcMeanflux, "235_053", "mtdwswrf", "mean_top_downward_short_wave_radiation_flux", "W m-2"),
    var(FcSfcMeanflux, "235_054", "mvimd", "mean_vertically_integrated_moisture_divergence", "kg m-2 s-1"),
    var(FcSfcMeanflux, "235_055", "mtpr", "mean_total_precipitation_rate", "kg m-2 s-1"),
    var(FcSfcMeanflux, "235_056", "mcsr", "mean_convective_snowfall_rate", "kg m-2 s-1"),
    var(FcSfcMeanflux, "235_057", "mlssr", "mean_large_scale_snowfall_rate", "kg m-2 s-1"),
    var(FcSfcMeanflux, "235_058", "msdrswrf", "mean_surface_direct_short_wave_radiation_flux", "W m-2"),
    var(FcSfcMeanflux, "235_059", "msdrswrfcs", "mean_surface_direct_short_wave_radiation_flux_clear_sky", "W m-2"),
    var(FcSfcMeanflux, "235_068", "msdwswrfcs", "mean_surface_downward_short_wave_radiation_flux_clear_sky", "W m-2"),
    var(FcSfcMeanflux, "235_069", "msdwlwrfcs", "mean_surface_downward_long_wave_radiation_flux_clear_sky", "W m-2"),
    var(FcSfcMeanflux, "235_070", "mper", "mean_potential_evaporation_rate", "kg m-2 s-1"),

    // Instantaneous forecast fields, half-month files.
    var(FcSfcInstan, "228_001", "cin", "convective_inhibition", "J kg-1"),
    var(FcSfcInstan, "228_003", "zust", "friction_velocity", "m s-1"),
    var(FcSfcInstan, "228_015", "dndzn", "minimum_vertical_gradient_of_refractivity_inside_trapping_layer", "m-1"),
    var(FcSfcInstan, "228_016", "dndza", "mean_vertical_gradient_of_refractivity_inside_trapping_layer", "m-1"),
    var(FcSfcInstan, "228_017", "dctb", "duct_base_height", "m").unconfirmed(),
    var(FcSfcInstan, "228_018", "tplb", "trapping_layer_base_height", "m").unconfirmed(),
    var(FcSfcInstan, "228_019", "tplt", "trapping_layer_top_height", "m").unconfirmed(),
    var(FcSfcInstan, "228_023", "cbh", "cloud_base_height", "m"),
    var(FcSfcInstan, "228_024", "deg0l", "zero_degree_level", "m").unconfirmed(),
    var(FcSfcInstan, "228_029", "i10fg", "instantaneous_10m_wind_gust", "m s-1"),
    var(FcSfcInstan, "228_088", "tcslw", "total_column_supercooled_liquid_water", "kg m-2"),
    var(FcSfcInstan, "228_217", "ilspf", "instantaneous_large_scale_surface_precipitation_fraction", "(0 - 1)"),
    var(FcSfcInstan, "228_218", "crr", "convective_rain_rate", "kg m-2 s-1"),
    var(FcSfcInstan, "228_219", "lsrr", "large_scale_rain_rate", "kg m-2 s-1"),
    var(FcSfcInstan, "228_220", "csfr", "convective_snowfall_rate_water_equivalent", "kg m-2 s-1"),
    var(FcSfcInstan, "228_221", "lssfr", "large_scale_snowfall_rate_water_equivalent", "kg m-2 s-1"),

    // Minimum and maximum forecast fields, half-month files.
    var(FcSfcMinmax, "128_049", "10fg", "10m_wind_gust_since_previous_post_processing", "m s-1").alias(&["fg10"]),
    var(FcSfcMinmax, "128_201", "mx2t", "maximum_2m_temperature_since_previous_post_processing", "K"),
    var(FcSfcMinmax, "128_202", "mn2t", "minimum_2m_temperature_since_previous_post_processing", "K"),
    var(FcSfcMinmax, "228_226", "mxtpr", "maximum_total_precipitation_rate_since_previous_post_processing", "kg m-2 s-1"),
    var(FcSfcMinmax, "228_227", "mntpr", "minimum_total_precipitation_rate_since_previous_post_processing", "kg m-2 s-1"),

    // Invariant fields, one time step under 197901/.
    var(Invariant, "128_026", "cl", "lake_cover", "(0 - 1)"),
    var(Invariant, "128_027", "cvl", "low_vegetation_cover", "(0 - 1)"),
    var(Invariant, "128_028", "cvh", "high_vegetation_cover", "(0 - 1)"),
    var(Invariant, "128_029", "tvl", "type_of_low_vegetation", "~"),
    var(Invariant, "128_030", "tvh", "type_of_high_vegetation", "~"),
    var(Invariant, "128_043", "slt", "soil_type", "~"),
    var(Invariant, "128_074", "sdfor", "standard_deviation_of_filtered_subgrid_orography", "m"),
    var(Invariant, "128_129", "z", "geopotential", "m2 s-2"),
    var(Invariant, "128_129", "z", "geopotential", "m2 s-2").grid(GRID_REGN320SC).unconfirmed(),
    var(Invariant, "128_160", "sdor", "standard_deviation_of_orography", "m"),
    var(Invariant, "128_161", "isor", "anisotropy_of_sub_gridscale_orography", "~"),
    var(Invariant, "128_162", "anor", "angle_of_sub_gridscale_orography", "radians"),
    var(Invariant, "128_163", "slor", "slope_of_sub_gridscale_orography", "~"),
    var(Invariant, "128_172", "lsm", "land_sea_mask", "(0 - 1)"),
    var(Invariant, "228_007", "dl", "lake_depth", "m"),
];
