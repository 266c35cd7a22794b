//! The closed-loop load generator: `clients` workers, each issuing its next operation as soon as
//! the previous one returns, like ZStack's 100 client threads. Each worker owns its client (and
//! so its connections), as separate API users would.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::ProgressBar;

use super::Error;

/// One operation: when it was issued and how long until it returned.
#[derive(Clone, Copy, Debug)]
pub struct Sample {
    pub issued: Instant,
    pub latency: Duration,
}

/// Runs operations `0..total` spread over `clients`, and returns their samples by index.
/// Stops at the first failure.
pub async fn closed_loop<C, F, Fut>(
    clients: &[C],
    total: usize,
    bar: &ProgressBar,
    op: F,
) -> Result<Vec<Sample>, Error>
where
    C: Clone + Send + 'static,
    F: Fn(C, usize) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = Result<(), Error>> + Send,
{
    let next = Arc::new(AtomicUsize::new(0));
    let mut workers = tokio::task::JoinSet::new();
    for client in clients.iter().take(total.max(1)) {
        let (client, next, op, bar) = (client.clone(), next.clone(), op.clone(), bar.clone());
        workers.spawn(async move {
            let mut samples = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    return Ok::<_, Error>(samples);
                }
                let issued = Instant::now();
                op(client.clone(), i).await?;
                samples.push((
                    i,
                    Sample {
                        issued,
                        latency: issued.elapsed(),
                    },
                ));
                bar.inc(1);
            }
        });
    }
    let mut by_index: Vec<Option<Sample>> = vec![None; total];
    while let Some(joined) = workers.join_next().await {
        for (i, sample) in joined.map_err(Error::Task)?? {
            by_index[i] = Some(sample);
        }
    }
    // Every index below `total` was taken by exactly one worker, and every worker succeeded.
    Ok(by_index.into_iter().flatten().collect())
}

/// The latencies of `samples`.
pub fn latencies(samples: &[Sample]) -> Vec<Duration> {
    samples.iter().map(|s| s.latency).collect()
}

/// From the first issue to the last return.
pub fn span(samples: &[Sample]) -> Duration {
    let start = samples.iter().map(|s| s.issued).min();
    let end = samples.iter().map(|s| s.issued + s.latency).max();
    match (start, end) {
        (Some(start), Some(end)) => end - start,
        _ => Duration::ZERO,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn every_operation_runs_once_over_all_clients() {
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let clients = vec![(); 4];
        let samples = closed_loop(&clients, 10, &ProgressBar::hidden(), {
            let seen = seen.clone();
            move |(), i| {
                let seen = seen.clone();
                async move {
                    seen.lock().unwrap().push(i);
                    Ok(())
                }
            }
        })
        .await
        .unwrap();
        assert_eq!(samples.len(), 10);
        let mut seen = seen.lock().unwrap().clone();
        seen.sort_unstable();
        assert_eq!(seen, (0..10).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn a_failure_stops_the_run() {
        let result = closed_loop(&[()], 3, &ProgressBar::hidden(), |(), i| async move {
            if i == 1 {
                Err(Error::Timeout {
                    phase: "test".into(),
                    done: 1,
                    total: 3,
                })
            } else {
                Ok(())
            }
        })
        .await;
        assert!(result.is_err());
    }
}
