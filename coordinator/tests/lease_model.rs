//! Model-based property test of the Lua scripts on a real redis-server: random sequences of
//! acquire, renew, complete, fail, release, reap and time passing, each answer checked against
//! a model of the state machine, and after every step the invariants:
//!
//! - at most one live lease per item (an item has one state and one current grant);
//! - epochs only increase;
//! - pending + leased + done + dead = total;
//! - done is terminal.
//!
//! Which of several ready items a grant picks is the store's choice (ties in ready time are
//! broken by id); the model follows it and checks everything else.

use std::time::Duration;

use coordinator::RedisStore;
use lease::LeaseStore;
use lease::model::{
    Ack, ItemSpec, ItemState, JobSpec, LeasePolicy, LeaseRef, ObjectSpec, SelectionSpec, SourceSpec,
};
use proptest::prelude::*;
use tests::redis_server::RedisServer;

const TTL: Duration = Duration::from_millis(300);
const ITEMS: usize = 4;
const MAX_ATTEMPTS: u32 = 2;
const MAX_EXPIRIES: u32 = 1;

#[derive(Clone, Debug)]
enum Op {
    Acquire(usize),
    Renew(usize),
    Complete(usize),
    Fail(usize, bool),
    Release(usize),
    Reap,
    /// Let every current grant expire.
    Advance,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (1usize..3).prop_map(Op::Acquire),
        2 => any::<usize>().prop_map(Op::Renew),
        3 => any::<usize>().prop_map(Op::Complete),
        2 => (any::<usize>(), any::<bool>()).prop_map(|(g, p)| Op::Fail(g, p)),
        2 => any::<usize>().prop_map(Op::Release),
        1 => Just(Op::Reap),
        1 => Just(Op::Advance),
    ]
}

#[derive(Clone, Debug)]
struct ModelItem {
    state: ItemState,
    epoch: u64,
    current: Option<usize>,
    done_by: Option<usize>,
    attempts: u32,
}

struct Model {
    items: Vec<ModelItem>,
    grants: Vec<(usize, LeaseRef, bool)>, // item, lease, expired
}

impl Model {
    fn live(&self, grant: usize) -> bool {
        let (item, _, expired) = &self.grants[grant];
        let model = &self.items[*item];
        model.state == ItemState::Leased && model.current == Some(grant) && !expired
    }

    fn refusal(&self, grant: usize) -> Ack {
        if self.items[self.grants[grant].0].state == ItemState::Done {
            Ack::AlreadyDone
        } else {
            Ack::LeaseLost
        }
    }

    fn reap(&mut self) {
        for index in 0..self.items.len() {
            let expired = match self.items[index].current {
                Some(g) => self.items[index].state == ItemState::Leased && self.grants[g].2,
                None => false,
            };
            if expired {
                // Time passes only in `Advance`, longer than a TTL with no call in between, so
                // no holder is ever in contact when its renewal falls due: an expiry never
                // counts here (lease::model::Contact; the conformance scenarios cover the
                // expiries that count and the poison item).
                self.items[index].state = ItemState::Pending;
            }
        }
    }
}

fn job() -> JobSpec {
    JobSpec {
        job_id: "model".into(),
        selection: SelectionSpec::default(),
        source: SourceSpec::default(),
        items: (0..ITEMS)
            .map(|i| ItemSpec {
                item_id: format!("{i:06}"),
                product: "p".into(),
                start: "2024-01-01".into(),
                end: "2024-01-01".into(),
                objects: vec![ObjectSpec {
                    key: format!("k{i}"),
                    size: 10,
                    etag: String::new(),
                    last_modified: String::new(),
                }],
            })
            .collect(),
        follow: None,
        bwlimit: None,
    }
}

async fn run(store: &RedisStore, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let mut model = Model {
        items: vec![
            ModelItem {
                state: ItemState::Pending,
                epoch: 0,
                current: None,
                done_by: None,
                attempts: 0,
            };
            ITEMS
        ],
        grants: Vec::new(),
    };
    for op in ops {
        let pick =
            |g: usize, model: &Model| (!model.grants.is_empty()).then(|| g % model.grants.len());
        match op {
            Op::Acquire(max) => {
                model.reap();
                let ready: Vec<usize> = (0..ITEMS)
                    .filter(|&i| model.items[i].state == ItemState::Pending)
                    .collect();
                let granted = store.acquire("w", max).await.unwrap();
                prop_assert_eq!(granted.len(), max.min(ready.len()));
                for grant in granted {
                    let index: usize = grant.item.item_id.parse().unwrap();
                    prop_assert!(
                        ready.contains(&index),
                        "granted {} which was not ready",
                        index
                    );
                    let item = &mut model.items[index];
                    prop_assert!(
                        grant.lease.epoch > item.epoch,
                        "epoch went from {} to {}",
                        item.epoch,
                        grant.lease.epoch
                    );
                    item.epoch = grant.lease.epoch;
                    item.state = ItemState::Leased;
                    item.current = Some(model.grants.len());
                    model.grants.push((index, grant.lease, false));
                }
            }
            Op::Renew(g) => {
                let Some(g) = pick(g, &model) else { continue };
                let expected = if model.live(g) {
                    Ack::Ok
                } else {
                    model.refusal(g)
                };
                prop_assert_eq!(
                    store.renew(&model.grants[g].1, "w").await.unwrap(),
                    expected
                );
            }
            Op::Complete(g) => {
                let Some(g) = pick(g, &model) else { continue };
                let item = model.grants[g].0;
                let expected = match model.items[item].done_by {
                    Some(by) if by == g => Ack::Ok,
                    Some(_) => Ack::AlreadyDone,
                    None if model.live(g) => Ack::Ok,
                    None => Ack::LeaseLost,
                };
                prop_assert_eq!(
                    store.complete(&model.grants[g].1, "w").await.unwrap(),
                    expected
                );
                if expected == Ack::Ok {
                    model.items[item].state = ItemState::Done;
                    model.items[item].done_by = Some(g);
                }
            }
            Op::Fail(g, permanent) => {
                let Some(g) = pick(g, &model) else { continue };
                let outcome = store
                    .fail(&model.grants[g].1, "w", "injected", permanent)
                    .await
                    .unwrap();
                if model.live(g) {
                    let item = &mut model.items[model.grants[g].0];
                    item.attempts += 1;
                    let dead = permanent || item.attempts >= MAX_ATTEMPTS;
                    item.state = if dead {
                        ItemState::Dead
                    } else {
                        ItemState::Pending
                    };
                    prop_assert_eq!((outcome.ack, outcome.dead), (Ack::Ok, dead));
                } else {
                    prop_assert_eq!((outcome.ack, outcome.dead), (model.refusal(g), false));
                }
            }
            Op::Release(g) => {
                let Some(g) = pick(g, &model) else { continue };
                let expected = if model.live(g) {
                    Ack::Ok
                } else {
                    model.refusal(g)
                };
                prop_assert_eq!(
                    store.release(&model.grants[g].1, "w").await.unwrap(),
                    expected
                );
                if expected == Ack::Ok {
                    model.items[model.grants[g].0].state = ItemState::Pending;
                }
            }
            Op::Reap => {
                store.reap().await.unwrap();
                model.reap();
            }
            Op::Advance => {
                tokio::time::sleep(TTL + Duration::from_millis(50)).await;
                for grant in &mut model.grants {
                    grant.2 = true;
                }
            }
        }
        check_invariants(store, &model).await?;
    }
    Ok(())
}

async fn check_invariants(store: &RedisStore, model: &Model) -> Result<(), TestCaseError> {
    let status = store.job("model").await.unwrap();
    prop_assert_eq!(
        status.counts.total() as usize,
        ITEMS,
        "pending + leased + done + dead != total"
    );
    let items = store.items("model").await.unwrap();
    for (index, item) in items.iter().enumerate() {
        let expected = &model.items[index];
        // An expired grant not yet reaped still shows as leased in the store.
        prop_assert_eq!(item.state, expected.state, "item {}", index);
        prop_assert_eq!(item.epoch, expected.epoch, "item {}", index);
        prop_assert_eq!(item.attempts, expected.attempts, "item {}", index);
        if expected.done_by.is_some() {
            prop_assert_eq!(item.state, ItemState::Done, "done must be terminal");
        }
    }
    let counted = |state| items.iter().filter(|i| i.state == state).count() as u32;
    prop_assert_eq!(status.counts.pending, counted(ItemState::Pending));
    prop_assert_eq!(status.counts.leased, counted(ItemState::Leased));
    prop_assert_eq!(status.counts.done, counted(ItemState::Done));
    prop_assert_eq!(status.counts.dead, counted(ItemState::Dead));
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 16, max_shrink_iters: 64, ..ProptestConfig::default() })]

    #[test]
    fn lua_scripts_follow_the_model(ops in prop::collection::vec(op(), 1..30)) {
        let server = RedisServer::start();
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async {
            let policy = LeasePolicy {
                ttl: TTL,
                max_attempts: MAX_ATTEMPTS,
                max_expiries: MAX_EXPIRIES,
                backoff_base: Duration::ZERO,
                backoff_cap: Duration::ZERO,
                ..LeasePolicy::default()
            };
            let store = RedisStore::connect(&server.url(), policy).await.unwrap();
            store.create_job(&job()).await.unwrap();
            run(&store, ops).await
        })?;
    }
}
