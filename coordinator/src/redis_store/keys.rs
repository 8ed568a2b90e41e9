//! The key names (the parent module's doc draws the layout), the keys of one job, and an
//! item's brief: the one value whose format the writer (job creation) and a reader (a page of
//! leases) share.

use redis::Script;

use lease::model::ItemSpec;

pub(super) const JOBS: &str = "era5:jobs";
/// Jobs that may still have work to grant; acquire walks only these.
pub(super) const ACTIVE: &str = "era5:active";
pub(super) const WORKERS: &str = "era5:workers";
/// Standing jobs by next pass (ms).
pub(super) const STANDING: &str = "era5:standing";
/// Per worker: a list of samples (newest first) and a gate key that lets one in per period.
pub(super) fn history_key(worker: &str) -> String {
    format!("era5:history:{worker}")
}
pub(super) const DRAIN: &str = "era5:drain";
/// Per worker (`<worker>|since`, `<worker>|last`): its unbroken streak of contact with the
/// store, in store time, which decides whether an expiry of its lease counts.
pub(super) const CONTACT: &str = "era5:contact";
/// The key acquire declares when it records no request (it writes nothing there).
pub(super) const NO_REQUEST: &str = "era5:acquired:-";

/// The grants one acquire request made (`job|item|lease|epoch`), kept two TTLs so that a
/// repeat of the request answers them again instead of granting more.
pub(super) fn request_key(worker: &str, request_id: &str) -> String {
    format!("era5:acquired:{worker}:{request_id}")
}
/// Every live grant as `<worker>|<job>|<item>`, scored by its expiry (ms): what counts against
/// a worker's lease cap.
pub(super) const HELD: &str = "era5:held";
/// Per worker: how many members of `HELD` are its.
pub(super) const HELD_COUNT: &str = "era5:held_count";

/// The keys of one job.
pub(super) struct JobKeys {
    pub(super) meta: String,
    pub(super) state: String,
    pub(super) pending: String,
    pub(super) leased: String,
    pub(super) items: String,
    pub(super) order: String,
}

impl JobKeys {
    /// The keys of `job_id`. `prelude.lua` reads the job id back from the meta key's name
    /// (`era5:{JOB}:meta`), so that name's shape is fixed.
    pub(super) fn new(job_id: &str) -> Self {
        let tag = format!("era5:{{{job_id}}}");
        Self {
            meta: format!("{tag}:meta"),
            state: format!("{tag}:st"),
            pending: format!("{tag}:pending"),
            leased: format!("{tag}:leased"),
            items: format!("{tag}:items"),
            order: format!("{tag}:order"),
        }
    }

    /// Prepares `script` with the keys every job script declares, in the order `prelude.lua`
    /// names them: the job's own keys, then the indexes a script may add the job to or take
    /// it from.
    pub(super) fn invocation<'a>(&self, script: &'a Script) -> redis::ScriptInvocation<'a> {
        let mut invocation = script.key(&self.meta);
        invocation
            .key(&self.state)
            .key(&self.pending)
            .key(&self.leased)
            .key(&self.items)
            .key(&self.order)
            .key(JOBS)
            .key(ACTIVE)
            .key(STANDING)
            .key(CONTACT)
            .key(HELD)
            .key(HELD_COUNT);
        invocation
    }
}

/// What a page of leases shows of an item spec, without its object list.
pub(super) fn brief(item: &ItemSpec) -> String {
    format!(
        "{}\t{}\t{}\t{}",
        item.product,
        item.start,
        item.end,
        item.objects.len()
    )
}
