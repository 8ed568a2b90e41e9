//! The coordinator as a lease service: the `Worker` gRPC calls behind [`LeaseClient`], with the
//! coordinator's messages turned into the lease model's types at this edge.
//!
//! - **The channel** ([`connect`]) is built from [`CoordinatorChannel`]: `https://` with the
//!   worker's certificate (whose name is the worker's name) or `http://`, a deadline on every
//!   call, HTTP/2 keepalive so a vanished coordinator is noticed. It connects lazily, so a
//!   coordinator that is down at start is retried like one that goes away later.
//! - **What the coordinator sends is bounded**: an Acquire response is at most
//!   [`MAX_RESPONSE_BYTES`], a grant without its lease reference is dropped, and a TTL under a
//!   second is taken as one second.

use std::time::Duration;

use common::sync::MutexExt;

use engine::bandwidth::Bandwidth;
use engine::sync::Outcome;
use lease::model::{Ack, LeaseRef, SourceSpec};
use proto::channel::CoordinatorChannel;
use proto::v1 as pb;
use proto::v1::worker_client::WorkerClient;
use tonic::transport::Channel;
use transport::RemoteObject;

use crate::client::{Acquired, ClientError, Granted, LeaseClient, LeaseEnd};

/// Largest Acquire response accepted (the coordinator bounds its responses well below).
pub const MAX_RESPONSE_BYTES: usize = 16 << 20;
/// The shortest TTL believed.
const MIN_TTL: Duration = Duration::from_secs(1);

/// The coordinator's channel: checked (https ⇔ TLS) and connected lazily.
pub fn connect(channel: &CoordinatorChannel) -> Result<WorkerClient<Channel>, proto::Error> {
    let endpoint = channel.endpoint()?;
    Ok(WorkerClient::new(endpoint.connect_lazy()).max_decoding_message_size(MAX_RESPONSE_BYTES))
}

/// The coordinator, for one worker.
#[derive(Clone)]
pub struct Coordinator {
    /// Replaced when the certificate is renewed (see `follow_certificate_renewals`).
    client: std::sync::Arc<std::sync::Mutex<WorkerClient<Channel>>>,
    worker: String,
    /// The id of an acquire request whose answer never came, to repeat it with.
    unanswered_acquire: std::sync::Arc<std::sync::Mutex<Option<String>>>,
    /// The process's cap, which takes the fleet bandwidth share the coordinator answers with.
    bandwidth: std::sync::Arc<Bandwidth>,
}

impl Coordinator {
    /// Calls as `worker` over `client`; the bandwidth shares it is given cap `bandwidth`.
    pub fn new(
        client: WorkerClient<Channel>,
        worker: &str,
        bandwidth: std::sync::Arc<Bandwidth>,
    ) -> Self {
        Self {
            client: std::sync::Arc::new(std::sync::Mutex::new(client)),
            worker: worker.to_string(),
            unanswered_acquire: std::sync::Arc::default(),
            bandwidth,
        }
    }

    /// Applies a bandwidth share the coordinator sent (with a grant, a renewal or on the
    /// session); `None`: the coordinator said nothing about it, the share stays.
    pub fn apply_share(&self, share: Option<&pb::BandwidthShare>) {
        let Some(share) = share else { return };
        if self.bandwidth.share() != share.bytes_per_sec {
            if let Some(bytes) = share.bytes_per_sec {
                tracing::info!(
                    share = %common::units::human_bytes(bytes),
                    "fleet bandwidth share per second"
                );
            } else {
                tracing::info!("no fleet bandwidth budget applies");
            }
            self.bandwidth.set_share(share.bytes_per_sec);
        }
    }

    /// The gRPC client (the session stream uses it too).
    pub fn grpc(&self) -> WorkerClient<Channel> {
        self.client.lock_unpoisoned().clone()
    }

    /// Reads the TLS files of `channel` again every `every` until `stop`. When they changed,
    /// still name this worker, and read well, every later call goes over a new channel that
    /// presents them: a renewed certificate (cert-manager's CSI driver renews short-lived
    /// ones on disk) is used without a restart. Established connections keep theirs.
    pub async fn follow_certificate_renewals(
        self,
        mut channel: CoordinatorChannel,
        every: Duration,
        stop: tokio_util::sync::CancellationToken,
    ) {
        let Some(files) = channel.tls.as_ref().map(|tls| tls.files.clone()) else {
            return;
        };
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(every) => {}
            }
            let material = match files.read() {
                Ok(material) => material,
                Err(error) => {
                    tracing::warn!(%error, "cannot read the renewed TLS files; keeping the current ones");
                    continue;
                }
            };
            let current = channel.tls.as_ref();
            if current.is_some_and(|c| {
                c.cert_pem == material.cert_pem
                    && c.key_pem == material.key_pem
                    && c.ca_pem == material.ca_pem
            }) {
                continue;
            }
            match proto::identity::identity_of_pem(&material.cert_pem) {
                Ok(identity) if identity.name == self.worker => {}
                Ok(identity) => {
                    tracing::error!(%identity, worker = %self.worker, "the renewed certificate names another worker; keeping the current one");
                    continue;
                }
                Err(error) => {
                    tracing::warn!(%error, "the renewed certificate has no worker identity; keeping the current one");
                    continue;
                }
            }
            channel.tls = Some(material);
            match connect(&channel) {
                Ok(client) => {
                    *self.client.lock_unpoisoned() = client;
                    tracing::info!(worker = %self.worker, "client certificate renewed: new connections present it");
                }
                Err(error) => tracing::warn!(%error, "cannot use the renewed TLS files"),
            }
        }
    }
}

fn to_pb(lease: &LeaseRef) -> pb::LeaseRef {
    pb::LeaseRef {
        job_id: lease.job_id.clone(),
        item_id: lease.item_id.clone(),
        lease_id: lease.lease_id.clone(),
        epoch: lease.epoch,
    }
}

fn from_pb_grant(lease: pb::Lease) -> Option<Granted> {
    let reference = lease.lease?;
    let source = lease.source.unwrap_or_default();
    Some(Granted {
        lease: LeaseRef {
            job_id: reference.job_id,
            item_id: reference.item_id,
            lease_id: reference.lease_id,
            epoch: reference.epoch,
        },
        objects: lease
            .objects
            .into_iter()
            .map(|o| RemoteObject {
                key: o.key,
                size: o.size,
                etag: (!o.etag.is_empty()).then_some(o.etag),
                last_modified: (!o.last_modified.is_empty()).then_some(o.last_modified),
            })
            .collect(),
        source: SourceSpec {
            bucket: source.bucket,
            endpoint: source.endpoint,
        },
        ttl: Duration::from_millis(lease.ttl_ms).max(MIN_TTL),
    })
}

fn ack_of(status: i32) -> Ack {
    match pb::LeaseStatus::try_from(status) {
        Ok(pb::LeaseStatus::Ok) => Ack::Ok,
        Ok(pb::LeaseStatus::AlreadyDone) => Ack::AlreadyDone,
        _ => Ack::LeaseLost,
    }
}

fn client_error(status: &tonic::Status) -> ClientError {
    let message = format!("{:?}: {}", status.code(), status.message());
    if status.code() == tonic::Code::PermissionDenied {
        ClientError::NotHolder(message)
    } else {
        ClientError::Unavailable(message)
    }
}

impl LeaseClient for Coordinator {
    async fn acquire(&self, max: usize) -> Result<Acquired, ClientError> {
        // A request whose answer never came is repeated with its id, so the coordinator
        // answers the grants it made then instead of granting more (they would only expire).
        let request_id = self
            .unanswered_acquire
            .lock_unpoisoned()
            .get_or_insert_with(lease::model::random_id)
            .clone();
        let request = pb::AcquireRequest {
            worker: self.worker.clone(),
            max: u32::try_from(max).unwrap_or(u32::MAX),
            request_id,
        };
        let answer = self.grpc().acquire(request).await;
        if answer.is_ok() {
            self.unanswered_acquire.lock_unpoisoned().take();
        }
        let response = answer.map_err(|s| client_error(&s))?.into_inner();
        self.apply_share(response.bandwidth.as_ref());
        Ok(Acquired {
            grants: response
                .leases
                .into_iter()
                .filter_map(from_pb_grant)
                .collect(),
            draining: response.draining,
            exhausted: false,
        })
    }

    async fn renew(&self, lease: &LeaseRef) -> Result<Ack, ClientError> {
        let request = pb::RenewRequest {
            lease: Some(to_pb(lease)),
            worker: self.worker.clone(),
        };
        let response = self
            .grpc()
            .renew(request)
            .await
            .map_err(|s| client_error(&s))?;
        self.apply_share(response.get_ref().bandwidth.as_ref());
        Ok(ack_of(response.get_ref().status))
    }

    async fn finish(
        &self,
        lease: &LeaseRef,
        end: &LeaseEnd,
        _outcomes: &[Outcome],
    ) -> Result<Ack, ClientError> {
        let mut client = self.grpc();
        let (lease, worker) = (Some(to_pb(lease)), self.worker.clone());
        let status = match end {
            LeaseEnd::Complete => client
                .complete(pb::CompleteRequest {
                    lease,
                    worker,
                    bytes: 0,
                })
                .await
                .map(|r| r.into_inner().status),
            LeaseEnd::Fail { reason, permanent } => client
                .fail(pb::FailRequest {
                    lease,
                    worker,
                    reason: reason.clone(),
                    permanent: *permanent,
                })
                .await
                .map(|r| r.into_inner().status),
            LeaseEnd::Release => client
                .release(pb::ReleaseRequest { lease, worker })
                .await
                .map(|r| r.into_inner().status),
        };
        status.map(ack_of).map_err(|s| client_error(&s))
    }
}
