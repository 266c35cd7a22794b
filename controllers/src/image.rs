//! Image controller: fetches each Image into a BackupStorage it may write (a `file:///`
//! directory on the management node), reporting `status.progress` while it downloads and
//! verifies, and records the verified copy in `status.installUrl`, which the VM controller hands
//! to hosts instead of `spec.url`. An image with no such store is used in place from
//! `spec.url`, and its Ready condition says so.
//!
//! Crash safety: the copy is written to a hidden `.part` file that is renamed into place only
//! once verified, so a copy that exists is whole; a fetch cut short (a restart, a lost
//! connection) leaves only the `.part`, which the next attempt truncates and starts again.

mod fetch;

use std::{
    collections::HashMap,
    future::Future,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use k8s_openapi::jiff::Timestamp;
use kube::{
    api::ListParams,
    runtime::{controller::Action, reflector::ObjectRef, watcher, Controller},
    Api, Client, ResourceExt,
};
use serde_json::Value;
use strata_apis::{
    condition::READY, image::ImagePhase, quantity, AdminState, BackupStorage, Image, ImageFormat,
    ImageSpec, ImageStatus, Progress,
};
use tokio::{sync::watch, time::Instant};
use tracing::warn;

use self::fetch::{Count, FetchError};
use crate::{
    conditions::{self, Desired},
    events::{self, Transition},
    Context, Error, Metrics,
};

/// Progress is written at most this often, so a fast download costs a few writes a second.
const PROGRESS_INTERVAL: Duration = Duration::from_millis(250);
/// A fetch that failed for a reason that may pass (a server down, a 404 being fixed) is tried
/// again after this long; a spec change tries again at once.
const RETRY: Duration = Duration::from_secs(60);
/// Share of the progress bar the download takes; verifying takes the rest.
const DOWNLOAD_SHARE: u64 = 90;

/// Ready reason of an image no BackupStorage holds: hosts fetch `spec.url` themselves.
pub(crate) const USED_IN_PLACE: &str = "UsedInPlace";

/// The image controller's state: the shared context, and when each image's last fetch failed
/// (by uid), so a failure is retried after [`RETRY`] rather than on its own status write.
pub(crate) struct Images {
    ctx: Arc<Context>,
    failed_at: Mutex<HashMap<String, Instant>>,
}

/// Runs the image controller until dropped.
pub(crate) async fn run(client: &Client, ctx: Arc<Context>, metrics: Arc<Metrics>) {
    let images = Controller::new(
        Api::<Image>::all(client.clone()),
        watcher::Config::default(),
    );
    let store = images.store();
    // A store appearing, changing or going decides where images not yet stored go.
    let images = images.watches(
        Api::<BackupStorage>::all(client.clone()),
        watcher::Config::default(),
        move |_| {
            store
                .state()
                .iter()
                .filter(|image| install_url(image).is_none())
                .map(|image| ObjectRef::from_obj(image.as_ref()))
                .collect::<Vec<_>>()
        },
    );
    let state = Arc::new(Images {
        ctx,
        failed_at: Mutex::default(),
    });
    crate::drain(
        "image",
        images.run(
            metrics.instrument("image", Metrics::ignore, reconcile),
            error_policy,
            state,
        ),
    )
    .await;
}

/// The spec of `image` as hosts should use it: its verified copy in a BackupStorage once it is
/// Ready there, else `spec.url` as declared.
pub(crate) fn for_hosts(image: &Image) -> ImageSpec {
    let mut spec = image.spec.clone();
    if let (Some(url), Some(status)) = (install_url(image), image.status.as_ref()) {
        spec.url = url.to_string();
        spec.checksum.clone_from(&status.checksum);
    }
    spec
}

/// What VMs read of `image` besides its spec, with its identity: the uid, and the stored copy
/// and its virtual size once Ready. The VM controller wakes the VMs using an image when this or
/// the generation changes, not on each progress write.
pub(crate) fn handoff(image: &Image) -> Option<String> {
    let virtual_size = image.status.as_ref().and_then(|s| s.virtual_size.as_ref());
    Some(format!(
        "{}|{}|{}",
        image.uid().unwrap_or_default(),
        install_url(image).unwrap_or_default(),
        virtual_size.map(|q| q.0.as_str()).unwrap_or_default()
    ))
}

/// Where hosts fetch the stored copy of `image`, once it is Ready in a BackupStorage.
fn install_url(image: &Image) -> Option<&str> {
    let status = image.status.as_ref()?;
    (status.phase == Some(ImagePhase::Ready))
        .then_some(status.install_url.as_deref())
        .flatten()
}

async fn reconcile(image: Arc<Image>, images: Arc<Images>) -> Result<Action, Error> {
    let ctx = &images.ctx;
    let name = image.name_any();
    let stores = Api::<BackupStorage>::all(ctx.client.clone())
        .list(&ListParams::default())
        .await
        .map_err(|source| Error::List {
            kind: "BackupStorage",
            owner: format!("Image {name}"),
            source,
        })?;
    let current = image.status.clone().unwrap_or_default();
    let mut report = Report::new(ctx, &image, current.clone());

    let action = match target(&image.spec, &current, &stores.items) {
        Target::InPlace(message) => {
            report.settle(Outcome::InPlace(message)).await?;
            Action::await_change()
        }
        Target::Missing(message) => {
            let outcome = Outcome::Failed {
                reason: "BackupStorageNotFound",
                message,
            };
            report.settle(outcome).await?;
            Action::await_change()
        }
        Target::Store(store) => {
            let copy = store.copy_path(&image);
            if is_stored(&image, &store, &copy).await {
                Action::await_change()
            } else if let Some(wait) = images.retry_in(&image, &current) {
                Action::requeue(wait)
            } else {
                let outcome = report.fetch(&store, &copy).await?;
                images.record(&image, matches!(outcome, Outcome::Failed { .. }));
                report.settle(outcome).await?;
                Action::await_change()
            }
        }
    };
    ctx.succeeded("Image", &name);
    Ok(action)
}

fn error_policy(image: Arc<Image>, error: &Error, images: Arc<Images>) -> Action {
    Action::requeue(images.ctx.failed("Image", &image.name_any(), error))
}

impl Images {
    /// How long to wait before fetching again an image whose fetch of this generation failed
    /// for a reason that may pass; `None` to fetch now.
    fn retry_in(&self, image: &Image, current: &ImageStatus) -> Option<Duration> {
        let ready = conditions::get(&current.conditions, READY)?;
        let failed_now = current.phase == Some(ImagePhase::Failed)
            && current.observed_generation == image.metadata.generation;
        if !failed_now || !retried(&ready.reason) {
            return None;
        }
        let failed_at = self
            .failed_at
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&image.uid().unwrap_or_default())
            .copied()?;
        RETRY.checked_sub(failed_at.elapsed())
    }

    /// Remembers when a fetch of `image` failed, and forgets it once one succeeds.
    fn record(&self, image: &Image, failed: bool) {
        let mut failed_at = self
            .failed_at
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let uid = image.uid().unwrap_or_default();
        if failed {
            failed_at.insert(uid, Instant::now());
        } else {
            failed_at.remove(&uid);
        }
    }
}

/// Failures that another attempt may cure without a spec change. A checksum or format
/// mismatch needs a new spec.
fn retried(reason: &str) -> bool {
    matches!(
        reason,
        "NotFound" | "Unreachable" | "DownloadFailed" | "BackupStorageWriteFailed"
    )
}

/// A BackupStorage directory an image is fetched into.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Store {
    name: String,
    dir: PathBuf,
}

impl Store {
    /// The copy of `image` in this store. The uid keeps an image deleted and created again
    /// under the same name from ever meeting its predecessor's file.
    fn copy_path(&self, image: &Image) -> PathBuf {
        let uid = image.uid().unwrap_or_default();
        let uid = uid.split('-').next().unwrap_or_default();
        let extension = match image.spec.format {
            ImageFormat::Qcow2 => "qcow2",
            ImageFormat::Raw => "raw",
            ImageFormat::Iso => "iso",
        };
        self.dir
            .join("images")
            .join(format!("{}-{uid}.{extension}", image.name_any()))
    }
}

/// Where an image goes.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Target {
    /// Into this store.
    Store(Store),
    /// Nowhere: hosts use `spec.url`; the message says why.
    InPlace(String),
    /// The stores the image names do not exist.
    Missing(String),
}

/// Picks the store for an image: among those it names (any when it names none), the first
/// `Enabled` `file:///` store not reported unready, preferring the one holding it already.
fn target(spec: &ImageSpec, current: &ImageStatus, stores: &[BackupStorage]) -> Target {
    let candidates: Vec<&BackupStorage> = if spec.backup_storages.is_empty() {
        stores.iter().collect()
    } else {
        stores
            .iter()
            .filter(|s| spec.backup_storages.contains(&s.name_any()))
            .collect()
    };
    if candidates.is_empty() && !spec.backup_storages.is_empty() {
        return Target::Missing(format!(
            "spec.backupStorages: no BackupStorage named {}",
            spec.backup_storages.join(", ")
        ));
    }
    let mut writable: Vec<Store> = candidates
        .into_iter()
        .filter(|s| s.spec.admin_state == AdminState::Enabled)
        .filter(|s| {
            conditions::get(
                &s.status
                    .as_ref()
                    .map(|s| s.conditions.clone())
                    .unwrap_or_default(),
                READY,
            )
            .is_none_or(|c| c.status == "True")
        })
        .filter_map(|s| {
            let dir = s.spec.url.strip_prefix("file://")?;
            Some(Store {
                name: s.name_any(),
                dir: PathBuf::from(dir),
            })
        })
        .collect();
    writable.sort_by(|a, b| a.name.cmp(&b.name));
    let held = writable
        .iter()
        .position(|s| current.backup_storage.as_deref() == Some(s.name.as_str()));
    match held.or((!writable.is_empty()).then_some(0)) {
        Some(i) => Target::Store(writable.swap_remove(i)),
        None if spec.backup_storages.is_empty() => Target::InPlace(
            "no Enabled file:/// BackupStorage to fetch it into; hosts fetch spec.url themselves"
                .into(),
        ),
        None => Target::InPlace(format!(
            "spec.backupStorages ({}) has no Enabled file:/// store to fetch it into; hosts \
             fetch spec.url themselves",
            spec.backup_storages.join(", ")
        )),
    }
}

/// Whether the current generation of `image` is Ready in `store` and its copy is still there.
async fn is_stored(image: &Image, store: &Store, copy: &Path) -> bool {
    let Some(status) = image.status.as_ref() else {
        return false;
    };
    install_url(image).is_some()
        && status.observed_generation == image.metadata.generation
        && status.backup_storage.as_deref() == Some(store.name.as_str())
        && tokio::fs::try_exists(copy).await.unwrap_or(false)
}

/// How a fetch ended, or why there is none.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Outcome {
    InPlace(String),
    Stored {
        store: String,
        install_url: String,
        size: u64,
        virtual_size: u64,
        sha256: String,
    },
    Failed {
        reason: &'static str,
        message: String,
    },
}

/// The two steps of a fetch, as `status.progress.step` names them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Step {
    Downloading,
    Verifying,
}

/// Writes an image's status: each step as it starts, progress throttled while it runs, and
/// the outcome, with an Event whenever the Ready reason changes.
struct Report<'a> {
    ctx: &'a Context,
    image: &'a Image,
    /// What the API server holds, as this controller last read or wrote it.
    written: ImageStatus,
}

impl<'a> Report<'a> {
    fn new(ctx: &'a Context, image: &'a Image, written: ImageStatus) -> Self {
        Self {
            ctx,
            image,
            written,
        }
    }

    /// Downloads `spec.url` into `copy` in `store`, verifies it, and moves it into place.
    async fn fetch(&mut self, store: &Store, copy: &Path) -> Result<Outcome, Error> {
        let image = self.image;
        let spec = &image.spec;
        let part = copy.with_file_name(format!(
            ".{}.part",
            copy.file_name().unwrap_or_default().to_string_lossy()
        ));
        let (tx, rx) = watch::channel(Count::default());
        let prepared = match copy.parent() {
            Some(dir) => tokio::fs::create_dir_all(dir)
                .await
                .map_err(|source| FetchError::Write {
                    path: dir.to_path_buf(),
                    source,
                }),
            None => Ok(()),
        };
        let downloaded = match prepared {
            Ok(()) => {
                self.during(store, Step::Downloading, rx.clone(), async {
                    fetch::download(&spec.url, &part, &tx).await
                })
                .await?
            }
            Err(e) => Err(e),
        };
        let outcome = match downloaded {
            Ok(size) => {
                let sums = self
                    .during(store, Step::Verifying, rx, fetch::checksum(&part, &tx))
                    .await?;
                match sums {
                    Ok(sums) => self.verified(store, &part, copy, size, &sums).await,
                    Err(e) => failed(&e),
                }
            }
            Err(e) => failed(&e),
        };
        if !matches!(outcome, Outcome::Stored { .. }) {
            let _ = tokio::fs::remove_file(&part).await;
        }
        Ok(outcome)
    }

    /// Checks the downloaded `part` against the spec and renames it to `copy`.
    async fn verified(
        &self,
        store: &Store,
        part: &Path,
        copy: &Path,
        size: u64,
        sums: &fetch::Sums,
    ) -> Outcome {
        let spec = &self.image.spec;
        if let Some(problem) = checksum_mismatch(spec, sums) {
            return problem;
        }
        let qcow2_size = match fetch::qcow2_virtual_size(part).await {
            Ok(size) => size,
            Err(e) => return failed(&e),
        };
        let virtual_size = match (spec.format, qcow2_size) {
            (ImageFormat::Qcow2, Some(size)) => size,
            (ImageFormat::Raw | ImageFormat::Iso, None) => size,
            (declared, found) => {
                return Outcome::Failed {
                    reason: "FormatMismatch",
                    message: format!(
                        "spec.format is {declared:?} but {} is {}",
                        spec.url,
                        if found.is_some() {
                            "a qcow2 file"
                        } else {
                            "not a qcow2 file"
                        }
                    )
                    .to_lowercase(),
                }
            }
        };
        // qemu runs as another user on the hosts that read the copy in place.
        let placed = async {
            tokio::fs::set_permissions(part, std::fs::Permissions::from_mode(0o644)).await?;
            tokio::fs::rename(part, copy).await
        };
        if let Err(source) = placed.await {
            return failed(&FetchError::Write {
                path: copy.to_path_buf(),
                source,
            });
        }
        Outcome::Stored {
            store: store.name.clone(),
            install_url: format!("file://{}", copy.display()),
            size,
            virtual_size,
            sha256: sums.sha256.clone(),
        }
    }

    /// Runs `work` as `step`: writes the step's start, then its progress from `rx` at most every
    /// [`PROGRESS_INTERVAL`] until `work` ends.
    async fn during<T>(
        &mut self,
        store: &Store,
        step: Step,
        mut rx: watch::Receiver<Count>,
        work: impl Future<Output = T>,
    ) -> Result<T, Error> {
        rx.mark_unchanged();
        self.write(downloading(
            &self.written,
            self.image,
            store,
            step,
            Count::default(),
        ))
        .await?;
        tokio::pin!(work);
        loop {
            tokio::select! {
                done = &mut work => return Ok(done),
                () = tokio::time::sleep(PROGRESS_INTERVAL) => {
                    if rx.has_changed().unwrap_or(false) {
                        let count = *rx.borrow_and_update();
                        let next = downloading(&self.written, self.image, store, step, count);
                        // Progress is advisory: a lost write must not cost the download.
                        if let Err(error) = self.write(next).await {
                            warn!(object = %format!("Image/{}", self.image.name_any()), error = %error, "progress not written");
                        }
                    }
                }
            }
        }
    }

    /// Writes the status an outcome gives, if it changes anything.
    async fn settle(&mut self, outcome: Outcome) -> Result<(), Error> {
        let next = settled(&self.written, self.image, &outcome, Timestamp::now());
        self.write(next).await
    }

    /// Merge-patches `next` over what was written, removing the fields it no longer has, and
    /// records an Event when the Ready reason changes.
    async fn write(&mut self, next: ImageStatus) -> Result<(), Error> {
        if next == self.written {
            return Ok(());
        }
        let name = self.image.name_any();
        self.ctx
            .patch_cluster_status::<Image, _>("Image", &name, &merge_patch(&self.written, &next))
            .await?;
        let transition = transition(&self.written, &next);
        self.written = next;
        if let Some(transition) = transition {
            events::publish(&self.ctx.recorder, self.image, vec![transition]).await;
        }
        Ok(())
    }
}

fn failed(error: &FetchError) -> Outcome {
    Outcome::Failed {
        reason: error.reason(),
        message: error.explain(),
    }
}

/// A failure when the fetched file's checksum is not the one `spec.checksum` names.
fn checksum_mismatch(spec: &ImageSpec, sums: &fetch::Sums) -> Option<Outcome> {
    let expected = spec.checksum.as_deref()?;
    let (algorithm, actual) = match expected.split_once(':') {
        Some(("md5", _)) => ("md5", &sums.md5),
        _ => ("sha256", &sums.sha256),
    };
    let actual = format!("{algorithm}:{actual}");
    (actual != expected).then(|| Outcome::Failed {
        reason: "ChecksumMismatch",
        message: format!("spec.checksum is {expected} but {} has {actual}", spec.url),
    })
}

/// The status while `step` runs, `count` bytes into it.
fn downloading(
    current: &ImageStatus,
    image: &Image,
    store: &Store,
    step: Step,
    count: Count,
) -> ImageStatus {
    let (base, share, verb) = match step {
        Step::Downloading => (0, DOWNLOAD_SHARE, "fetching"),
        Step::Verifying => (DOWNLOAD_SHARE, 100 - DOWNLOAD_SHARE, "verifying"),
    };
    let percent = match count.total {
        Some(total) if total > 0 => base + share * count.done.min(total) / total,
        _ => base,
    };
    let message = match count.total {
        Some(total) => format!("{} of {}", approx(count.done), approx(total)),
        None => format!("{} so far", approx(count.done)),
    };
    let mut status = ImageStatus {
        observed_generation: image.metadata.generation,
        phase: Some(ImagePhase::Downloading),
        backup_storage: Some(store.name.clone()),
        progress: Some(Progress {
            percent: i32::try_from(percent).unwrap_or(100),
            step: format!("{step:?}"),
            message: Some(message),
        }),
        conditions: current.conditions.clone(),
        ..ImageStatus::default()
    };
    let ready = Desired::new(
        READY,
        false,
        format!("{step:?}"),
        format!(
            "{verb} {} into BackupStorage {}",
            image.spec.url, store.name
        ),
    );
    conditions::set(
        &mut status.conditions,
        ready,
        image.metadata.generation,
        Timestamp::now(),
    );
    status
}

/// The status an outcome leaves.
fn settled(current: &ImageStatus, image: &Image, outcome: &Outcome, now: Timestamp) -> ImageStatus {
    let generation = image.metadata.generation;
    let mut status = ImageStatus {
        observed_generation: generation,
        conditions: current.conditions.clone(),
        ..ImageStatus::default()
    };
    let ready = match outcome {
        Outcome::InPlace(message) => {
            status.phase = Some(ImagePhase::Ready);
            Desired::new(READY, true, USED_IN_PLACE, message.clone())
        }
        Outcome::Stored {
            store,
            install_url,
            size,
            virtual_size,
            sha256,
        } => {
            status.phase = Some(ImagePhase::Ready);
            status.size = Some(quantity::format_bytes(*size));
            status.virtual_size = Some(quantity::format_bytes(*virtual_size));
            status.checksum = Some(format!("sha256:{sha256}"));
            status.backup_storage = Some(store.clone());
            status.install_url = Some(install_url.clone());
            Desired::new(
                READY,
                true,
                "Stored",
                format!("verified and stored in BackupStorage {store}"),
            )
        }
        Outcome::Failed { reason, message } => {
            status.phase = Some(ImagePhase::Failed);
            Desired::new(READY, false, *reason, message.clone())
        }
    };
    conditions::set(&mut status.conditions, ready, generation, now);
    status
}

/// `next` as a JSON merge patch over `previous`: fields `next` lacks are removed.
fn merge_patch(previous: &ImageStatus, next: &ImageStatus) -> Value {
    let mut patch = serde_json::to_value(next).unwrap_or(Value::Null);
    if let (Ok(Value::Object(old)), Value::Object(new)) =
        (serde_json::to_value(previous), &mut patch)
    {
        for key in old.keys() {
            new.entry(key.clone()).or_insert(Value::Null);
        }
    }
    patch
}

/// The Event for a change of the Ready reason, if it changed.
fn transition(previous: &ImageStatus, next: &ImageStatus) -> Option<Transition> {
    let reason = |s: &ImageStatus| conditions::get(&s.conditions, READY).map(|c| c.reason.clone());
    let ready = conditions::get(&next.conditions, READY)?;
    if reason(previous) == reason(next) {
        return None;
    }
    Some(match next.phase {
        Some(ImagePhase::Failed) => Transition::warning(&ready.reason, &ready.message),
        _ => Transition::normal(&ready.reason, &ready.message),
    })
}

/// A byte count for people: `1.5 MiB`.
fn approx(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = "B";
    for u in UNITS {
        if value < 1024.0 {
            break;
        }
        value /= 1024.0;
        unit = u;
    }
    if unit == "B" {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {unit}")
    }
}

#[cfg(test)]
mod tests {
    use strata_apis::BackupStorageSpec;

    use super::*;

    fn store(name: &str, url: &str, admin_state: AdminState) -> BackupStorage {
        BackupStorage::new(
            name,
            BackupStorageSpec {
                url: url.into(),
                admin_state,
                ..BackupStorageSpec::default()
            },
        )
    }

    fn spec(stores: &[&str]) -> ImageSpec {
        ImageSpec {
            url: "http://127.0.0.1/i.qcow2".into(),
            backup_storages: stores.iter().map(|s| s.to_string()).collect(),
            ..ImageSpec::default()
        }
    }

    #[test]
    fn only_enabled_file_stores_take_images() {
        let stores = [
            store("a-http", "http://images.example/", AdminState::Enabled),
            store("b-off", "file:///srv/off", AdminState::Disabled),
            store("c-dir", "file:///srv/images", AdminState::Enabled),
        ];
        let status = ImageStatus::default();
        assert_eq!(
            target(&spec(&[]), &status, &stores),
            Target::Store(Store {
                name: "c-dir".into(),
                dir: "/srv/images".into()
            })
        );
        let Target::InPlace(message) = target(&spec(&["a-http", "b-off"]), &status, &stores) else {
            panic!("no writable store named");
        };
        assert!(message.contains("a-http, b-off"), "{message}");
        assert!(matches!(
            target(&spec(&[]), &status, &stores[..2]),
            Target::InPlace(_)
        ));
        assert_eq!(
            target(&spec(&["nope"]), &status, &stores),
            Target::Missing("spec.backupStorages: no BackupStorage named nope".into())
        );
    }

    #[test]
    fn an_image_stays_in_the_store_that_holds_it() {
        let stores = [
            store("a", "file:///a", AdminState::Enabled),
            store("b", "file:///b", AdminState::Enabled),
        ];
        let held = ImageStatus {
            backup_storage: Some("b".into()),
            ..ImageStatus::default()
        };
        assert!(matches!(target(&spec(&[]), &held, &stores), Target::Store(s) if s.name == "b"));
        assert!(
            matches!(target(&spec(&[]), &ImageStatus::default(), &stores), Target::Store(s) if s.name == "a")
        );
    }

    #[test]
    fn progress_is_split_between_download_and_verify() {
        let image = Image::new("i", spec(&[]));
        let store = Store {
            name: "s".into(),
            dir: "/s".into(),
        };
        let at = |step, done, total| {
            downloading(
                &ImageStatus::default(),
                &image,
                &store,
                step,
                Count { done, total },
            )
            .progress
            .expect("progress")
        };
        let half = at(Step::Downloading, 1 << 20, Some(2 << 20));
        assert_eq!((half.percent, half.step.as_str()), (45, "Downloading"));
        assert_eq!(half.message.as_deref(), Some("1.0 MiB of 2.0 MiB"));
        assert_eq!(at(Step::Downloading, 500, None).percent, 0);
        assert_eq!(at(Step::Verifying, 2, Some(2)).percent, 100);
        assert_eq!(at(Step::Verifying, 0, Some(2)).percent, 90);
    }

    #[test]
    fn a_checksum_is_compared_in_its_own_algorithm() {
        let sums = fetch::Sums {
            sha256: "ab".into(),
            md5: "cd".into(),
        };
        let mut spec = spec(&[]);
        assert_eq!(checksum_mismatch(&spec, &sums), None);
        spec.checksum = Some("md5:cd".into());
        assert_eq!(checksum_mismatch(&spec, &sums), None);
        spec.checksum = Some("sha256:00".into());
        let Some(Outcome::Failed { reason, message }) = checksum_mismatch(&spec, &sums) else {
            panic!("a mismatch fails");
        };
        assert_eq!(reason, "ChecksumMismatch");
        assert!(message.ends_with("has sha256:ab"), "{message}");
    }

    #[test]
    fn the_merge_patch_removes_what_the_new_status_lacks() {
        let before = ImageStatus {
            progress: Some(Progress::default()),
            ..ImageStatus::default()
        };
        let after = ImageStatus {
            phase: Some(ImagePhase::Ready),
            ..ImageStatus::default()
        };
        let patch = merge_patch(&before, &after);
        assert_eq!(patch["progress"], Value::Null);
        assert!(patch.as_object().expect("object").contains_key("progress"));
        assert_eq!(patch["phase"], "Ready");
    }

    #[test]
    fn vms_care_about_a_new_copy_not_about_progress() {
        let mut image = Image::new("i", spec(&[]));
        image.metadata.uid = Some("u".into());
        let status = |phase, percent| ImageStatus {
            phase: Some(phase),
            install_url: Some("file:///s/images/i.qcow2".into()),
            virtual_size: Some(quantity::format_bytes(64 << 20)),
            progress: Some(Progress {
                percent,
                ..Progress::default()
            }),
            ..ImageStatus::default()
        };
        image.status = Some(status(ImagePhase::Downloading, 10));
        let downloading = handoff(&image);
        image.status = Some(status(ImagePhase::Downloading, 50));
        assert_eq!(handoff(&image), downloading, "progress alone");
        image.status = Some(status(ImagePhase::Ready, 100));
        assert_ne!(handoff(&image), downloading, "the copy is ready");
    }

    #[test]
    fn hosts_get_the_stored_copy_once_ready_only() {
        let mut image = Image::new("i", spec(&[]));
        image.status = Some(ImageStatus {
            phase: Some(ImagePhase::Downloading),
            install_url: Some("file:///s/images/i.qcow2".into()),
            checksum: Some("sha256:ab".into()),
            ..ImageStatus::default()
        });
        assert_eq!(for_hosts(&image).url, "http://127.0.0.1/i.qcow2");
        if let Some(status) = image.status.as_mut() {
            status.phase = Some(ImagePhase::Ready);
        }
        let spec = for_hosts(&image);
        assert_eq!(spec.url, "file:///s/images/i.qcow2");
        assert_eq!(spec.checksum.as_deref(), Some("sha256:ab"));
    }
}
