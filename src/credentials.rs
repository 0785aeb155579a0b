//! IAM credentials for signing: the standard AWS chain (optionally assuming a role on top),
//! held in memory and refreshed by a background task well before they expire.
//!
//! The request path only ever reads the current credentials (a lock-free load); it never
//! waits on a refresh while valid ones are held, and never gets expired ones.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwapOption;
use aws_config::meta::region::RegionProviderChain;
use aws_config::sts::AssumeRoleProvider;
use aws_config::BehaviorVersion;
use aws_credential_types::provider::{ProvideCredentials, SharedCredentialsProvider};
use aws_credential_types::Credentials;
use aws_types::region::Region;
use tokio::sync::watch;

use crate::config::CredentialsConfig;
use crate::error_chain::error_chain;
use crate::sign::{SignError, SigningIdentity};

/// Refresh this long before expiry when credentials live long enough (the SDKs use 5 min).
const REFRESH_AHEAD: Duration = Duration::from_secs(300);
/// Credentials without an expiry (static keys) are re-read this often, to pick up rotation.
const STATIC_REFRESH: Duration = Duration::from_secs(900);
/// Never refresh more often than this, even for credentials that are about to expire.
const MIN_REFRESH: Duration = Duration::from_millis(200);
/// One fetch from the chain may take this long (IMDS and STS calls have their own retries).
const FETCH_TIMEOUT: Duration = Duration::from_secs(30);
/// Backoff after a failed fetch: doubles from the first to the last value.
const RETRY_FIRST: Duration = Duration::from_millis(500);
const RETRY_MAX: Duration = Duration::from_secs(30);
/// STS region when the chain has none.
const FALLBACK_REGION: &str = "us-east-1";

/// No valid credentials to sign with.
#[derive(Debug, thiserror::Error)]
#[error("no valid AWS credentials are available to sign the request")]
pub struct CredentialsError;

/// One set of credentials, converted once for the signer.
#[derive(Debug)]
pub struct HeldCredentials {
    pub identity: SigningIdentity,
    pub expiry: Option<SystemTime>,
}

impl HeldCredentials {
    fn new(credentials: &Credentials) -> Result<Self, SignError> {
        Ok(Self {
            identity: SigningIdentity::new(credentials)?,
            expiry: credentials.expiry(),
        })
    }

    fn valid_at(&self, now: SystemTime) -> bool {
        self.expiry.is_none_or(|expiry| expiry > now)
    }
}

/// The credentials currently held, shared by the request path and the refresher.
#[derive(Debug)]
pub struct CredentialStore {
    current: ArcSwapOption<HeldCredentials>,
    /// Becomes true once the first fetch has finished, successfully or not.
    first_fetch_done: watch::Sender<bool>,
}

impl CredentialStore {
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            current: ArcSwapOption::empty(),
            first_fetch_done: watch::Sender::new(false),
        })
    }

    /// A store holding fixed credentials (tests and benchmarks).
    pub fn with_credentials(credentials: &Credentials) -> Arc<Self> {
        let store = Self::new();
        if let Err(error) = store.store(credentials) {
            tracing::error!(%error, "credentials not usable for signing");
        }
        store.first_fetch_done.send_replace(true);
        store
    }

    /// Holds `credentials` from now on. Credentials the signer cannot use (a session token
    /// that is not a valid header value) are refused and the previous ones kept.
    fn store(&self, credentials: &Credentials) -> Result<(), SignError> {
        let held = HeldCredentials::new(credentials)?;
        self.current.store(Some(Arc::new(held)));
        Ok(())
    }

    /// The held credentials if they are still valid at `now`.
    pub fn valid(&self, now: SystemTime) -> Option<Arc<HeldCredentials>> {
        self.current.load_full().filter(|held| held.valid_at(now))
    }

    /// Like [`CredentialStore::valid`], but right after start, while the first fetch is still
    /// running, waits up to `wait` for it instead of failing the request.
    pub async fn valid_or_first(
        &self,
        wait: Duration,
    ) -> Result<Arc<HeldCredentials>, CredentialsError> {
        if let Some(held) = self.valid(SystemTime::now()) {
            return Ok(held);
        }
        let mut done = self.first_fetch_done.subscribe();
        let _ = tokio::time::timeout(wait, done.wait_for(|done| *done)).await;
        self.valid(SystemTime::now()).ok_or(CredentialsError)
    }

    /// Seconds until the held credentials expire: 0 with none or expired ones, `f64::MAX` for
    /// credentials without an expiry.
    pub fn seconds_to_expiry(&self, now: SystemTime) -> f64 {
        match self.valid(now) {
            None => 0.0,
            Some(held) => match held.expiry {
                None => f64::MAX,
                Some(expiry) => expiry
                    .duration_since(now)
                    .map(|left| left.as_secs_f64())
                    .unwrap_or(0.0),
            },
        }
    }
}

/// The default AWS credential chain, with `role_arn` assumed on top when configured.
///
/// Loading the chain may itself make network calls (IMDS for the region), so this runs in the
/// refresher task, never on the start-up path.
pub async fn chain_provider(config: &CredentialsConfig) -> SharedCredentialsProvider {
    let region = RegionProviderChain::default_provider().or_else(Region::new(FALLBACK_REGION));
    let sdk = aws_config::defaults(BehaviorVersion::latest())
        .region(region)
        .load()
        .await;
    let base = sdk.credentials_provider();
    if config.role_arn.is_empty() {
        return base.unwrap_or_else(|| SharedCredentialsProvider::new(NoCredentials));
    }
    let mut builder = AssumeRoleProvider::builder(config.role_arn.clone())
        .session_name(config.session_name.clone())
        .configure(&sdk);
    if !config.external_id.is_empty() {
        builder = builder.external_id(config.external_id.clone());
    }
    SharedCredentialsProvider::new(builder.build().await)
}

/// Stands in when the chain found no provider at all.
#[derive(Debug)]
struct NoCredentials;

impl ProvideCredentials for NoCredentials {
    fn provide_credentials<'a>(
        &'a self,
    ) -> aws_credential_types::provider::future::ProvideCredentials<'a>
    where
        Self: 'a,
    {
        aws_credential_types::provider::future::ProvideCredentials::ready(Err(
            aws_credential_types::provider::error::CredentialsError::not_loaded(
                "the AWS credential chain has no provider",
            ),
        ))
    }
}

/// Keeps `store` filled from `provider` for ever (the task is aborted at shutdown).
pub async fn refresh_forever(provider: SharedCredentialsProvider, store: Arc<CredentialStore>) {
    let mut failures: u32 = 0;
    loop {
        let fetched = fetch(&provider).await;
        let now = SystemTime::now();
        let wait = match fetched.and_then(|credentials| {
            store.store(&credentials).map_err(|e| e.to_string())?;
            Ok(credentials)
        }) {
            Ok(credentials) => {
                failures = 0;
                let wait = next_refresh(now, credentials.expiry());
                tracing::info!(
                    expires_in_s = credentials
                        .expiry()
                        .and_then(|e| e.duration_since(now).ok())
                        .map(|d| d.as_secs()),
                    next_refresh_s = wait.as_secs_f64(),
                    temporary = credentials.session_token().is_some(),
                    "AWS credentials loaded"
                );
                wait
            }
            Err(reason) => {
                let wait = retry_delay(failures);
                failures = failures.saturating_add(1);
                if store.valid(now).is_some() {
                    tracing::warn!(%reason, retry_in_s = wait.as_secs_f64(), "refreshing AWS credentials failed; still signing with the valid ones held");
                } else {
                    tracing::error!(%reason, retry_in_s = wait.as_secs_f64(), "no AWS credentials: requests get 503 credentials_unavailable and /readyz is 503 until some are found");
                }
                wait
            }
        };
        store.first_fetch_done.send_replace(true);
        tokio::time::sleep(wait).await;
    }
}

/// One fetch from the chain: unexpired credentials, or why there are none. The reasons come
/// from the chain and describe the source, never the secret.
async fn fetch(provider: &SharedCredentialsProvider) -> Result<Credentials, String> {
    match tokio::time::timeout(FETCH_TIMEOUT, provider.provide_credentials()).await {
        Ok(Ok(credentials)) if credentials.expiry().is_none_or(|e| e > SystemTime::now()) => {
            Ok(credentials)
        }
        Ok(Ok(_)) => Err("the chain returned credentials that have already expired".to_owned()),
        Ok(Err(e)) => Err(error_chain(&e)),
        Err(_) => Err(format!("no answer within {}s", FETCH_TIMEOUT.as_secs())),
    }
}

/// When to refresh credentials fetched at `now`: 5 minutes before expiry when they live
/// long enough, else half-way through their remaining life.
pub fn next_refresh(now: SystemTime, expiry: Option<SystemTime>) -> Duration {
    let Some(expiry) = expiry else {
        return STATIC_REFRESH;
    };
    let left = expiry.duration_since(now).unwrap_or_default();
    let wait = if left > REFRESH_AHEAD * 2 {
        left - REFRESH_AHEAD
    } else {
        left / 2
    };
    wait.max(MIN_REFRESH)
}

/// Exponential backoff between failed fetches.
fn retry_delay(failures: u32) -> Duration {
    RETRY_FIRST
        .saturating_mul(2u32.saturating_pow(failures.min(16)))
        .min(RETRY_MAX)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn long_lived_credentials_refresh_five_minutes_before_expiry() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let hour = now + Duration::from_secs(3600);
        assert_eq!(next_refresh(now, Some(hour)), Duration::from_secs(3300));
    }

    #[test]
    fn short_lived_credentials_refresh_half_way() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        assert_eq!(
            next_refresh(now, Some(now + Duration::from_secs(6))),
            Duration::from_secs(3)
        );
        assert_eq!(
            next_refresh(now, Some(now + Duration::from_secs(600))),
            Duration::from_secs(300)
        );
        assert_eq!(next_refresh(now, Some(now)), MIN_REFRESH);
        assert_eq!(next_refresh(now, None), STATIC_REFRESH);
    }

    #[test]
    fn expired_credentials_are_never_handed_out() {
        let now = SystemTime::now();
        let creds = Credentials::new(
            "AKID",
            "secret",
            Some("token".into()),
            Some(now + Duration::from_secs(2)),
            "test",
        );
        let store = CredentialStore::with_credentials(&creds);
        assert!(store.valid(now).is_some());
        assert!(store.valid(now + Duration::from_secs(2)).is_none());
        assert_eq!(store.seconds_to_expiry(now + Duration::from_secs(3)), 0.0);
        let left = store.seconds_to_expiry(now);
        assert!(left > 1.9 && left <= 2.0, "{left}");
    }

    #[test]
    fn backoff_doubles_and_is_capped() {
        assert_eq!(retry_delay(0), Duration::from_millis(500));
        assert_eq!(retry_delay(1), Duration::from_secs(1));
        assert_eq!(retry_delay(3), Duration::from_secs(4));
        assert_eq!(retry_delay(40), RETRY_MAX);
    }
}
