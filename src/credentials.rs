//! IAM credentials for signing: the standard AWS chain (optionally assuming a role on top),
//! held in memory and refreshed by a background task well before they expire.
//!
//! The request path reads the current credentials (a lock-free load); it never waits on a
//! refresh while valid ones are held, and never gets expired ones. The refresh schedule is
//! kept in wall-clock time: after a laptop sleeps past the expiry, the refresher's timers
//! (monotonic time, which stops during suspend) have not fired, so the refresher re-reads the
//! wall clock every [`WALL_CLOCK_CHECK`], and the first request that finds the held
//! credentials expired wakes it at once; every request arriving meanwhile waits (bounded) on
//! that same fetch.

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
use crate::sso::{SsoLogin, TokenState};

/// Refresh this long before expiry when credentials live long enough (the SDKs use 5 min).
const REFRESH_AHEAD: Duration = Duration::from_secs(300);
/// Credentials without an expiry (static keys) are re-read this often, to pick up rotation.
const STATIC_REFRESH: Duration = Duration::from_secs(900);
/// Never refresh more often than this, even for credentials that are about to expire.
const MIN_REFRESH: Duration = Duration::from_millis(200);
/// One fetch from the chain may take this long (IMDS and STS calls have their own retries).
const FETCH_TIMEOUT: Duration = Duration::from_secs(30);
/// While waiting for the next refresh, the refresher re-reads the wall clock this often.
pub const WALL_CLOCK_CHECK: Duration = Duration::from_secs(1);
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
    /// How many fetches have finished (successfully or not), and when the last one did.
    fetches: watch::Sender<Fetches>,
    /// The fetch count requests are waiting for: while it is above the count of finished
    /// fetches, the refresher fetches at once. Only the refresher subscribes.
    wanted: watch::Sender<u64>,
}

/// The refresher's progress, as requests see it.
#[derive(Clone, Copy, Debug)]
struct Fetches {
    done: u64,
    last_ended: SystemTime,
}

impl CredentialStore {
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            current: ArcSwapOption::empty(),
            fetches: watch::Sender::new(Fetches {
                done: 0,
                last_ended: SystemTime::UNIX_EPOCH,
            }),
            wanted: watch::Sender::new(0),
        })
    }

    /// A store holding fixed credentials (tests and benchmarks).
    pub fn with_credentials(credentials: &Credentials) -> Arc<Self> {
        let store = Self::new();
        if let Err(error) = store.store(credentials) {
            tracing::error!(%error, "credentials not usable for signing");
        }
        store.fetch_finished(SystemTime::now());
        store
    }

    /// Holds `credentials` from now on. Credentials the signer cannot use (a session token
    /// that is not a valid header value) are refused and the previous ones kept.
    fn store(&self, credentials: &Credentials) -> Result<(), SignError> {
        let held = HeldCredentials::new(credentials)?;
        self.current.store(Some(Arc::new(held)));
        Ok(())
    }

    /// Records the end of a fetch (after its credentials, if any, are stored); returns the
    /// count of finished fetches.
    fn fetch_finished(&self, at: SystemTime) -> u64 {
        let mut done = 0;
        self.fetches.send_modify(|fetches| {
            fetches.done += 1;
            fetches.last_ended = at;
            done = fetches.done;
        });
        done
    }

    /// The held credentials if they are still valid at `now`.
    pub fn valid(&self, now: SystemTime) -> Option<Arc<HeldCredentials>> {
        self.current.load_full().filter(|held| held.valid_at(now))
    }

    /// Like [`CredentialStore::valid`], but waits up to `wait` for a fetch instead of failing
    /// the request when one is coming: right after start, while the first fetch is running;
    /// and when the held credentials have expired with no fetch since (the machine slept past
    /// their expiry), in which case it asks the refresher for that fetch now. Concurrent
    /// requests wait on the same fetch. Otherwise (no credentials found, a fetch already
    /// failed since they expired) it fails at once and the refresher's backoff goes on.
    pub async fn valid_or_first(
        &self,
        wait: Duration,
    ) -> Result<Arc<HeldCredentials>, CredentialsError> {
        if let Some(held) = self.valid(SystemTime::now()) {
            return Ok(held);
        }
        let mut fetches = self.fetches.subscribe();
        let seen = *fetches.borrow_and_update();
        let coming = if seen.done == 0 {
            true
        } else if self.expired_after(seen.last_ended) && self.wanted.receiver_count() > 0 {
            let next = seen.done + 1;
            self.wanted.send_if_modified(|wanted| {
                let raise = *wanted < next;
                if raise {
                    *wanted = next;
                }
                raise
            });
            true
        } else {
            false
        };
        if coming {
            let _ = tokio::time::timeout(wait, fetches.wait_for(|f| f.done > seen.done)).await;
        }
        self.valid(SystemTime::now()).ok_or(CredentialsError)
    }

    /// True when the held credentials have an expiry later than `moment`.
    fn expired_after(&self, moment: SystemTime) -> bool {
        self.current
            .load()
            .as_ref()
            .and_then(|held| held.expiry)
            .is_some_and(|expiry| expiry > moment)
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
///
/// Logs one WARN when the proxy finds itself without credentials (which sources were tried,
/// how to provide some) and one INFO when it has some again; the failures in between are
/// DEBUG lines. With `sso` (the selected profile's SSO login), a failure whose cause is the
/// cached SSO token (missing, expired) gets its own plain WARN line naming the profile and
/// `aws sso login`, once per token state; while the token stays that way the refresher looks at
/// the token file every [`SSO_TOKEN_POLL`] and fetches as soon as a login has rewritten it
/// (else after the longest backoff).
pub async fn refresh_forever(
    provider: SharedCredentialsProvider,
    sso: Option<SsoLogin>,
    store: Arc<CredentialStore>,
) {
    let mut wanted = store.wanted.subscribe();
    let mut failures: u32 = 0;
    let mut missing_since: Option<SystemTime> = None;
    // The SSO token state last logged, so that each state is said once.
    let mut sso_logged: Option<TokenState> = None;
    loop {
        let fetched = fetch(&provider).await;
        let now = SystemTime::now();
        let next = match fetched.and_then(|credentials| {
            store.store(&credentials).map_err(|e| e.to_string())?;
            Ok(credentials)
        }) {
            Ok(credentials) => {
                failures = 0;
                sso_logged = None;
                let wait = next_refresh(now, credentials.expiry());
                let expires_in_s = credentials
                    .expiry()
                    .and_then(|e| e.duration_since(now).ok())
                    .map(|d| d.as_secs());
                let temporary = credentials.session_token().is_some();
                match missing_since.take() {
                    Some(since) => tracing::info!(
                        without_s = now.duration_since(since).unwrap_or_default().as_secs(),
                        expires_in_s,
                        temporary,
                        "AWS credentials found: requests are signed again"
                    ),
                    None => tracing::info!(
                        expires_in_s,
                        next_refresh_s = wait.as_secs_f64(),
                        temporary,
                        "AWS credentials loaded"
                    ),
                }
                Next::At(now + wait)
            }
            Err(reason) => {
                let wait = retry_delay(failures);
                failures = failures.saturating_add(1);
                let retry_in_s = wait.as_secs_f64();
                let held = store.valid(now);
                let sso_problem = match &sso {
                    Some(login) => {
                        let state = login.token_state().await;
                        login.problem(state).map(|problem| (login, state, problem))
                    }
                    None => None,
                };
                if held.is_none() && missing_since.is_none() {
                    missing_since = Some(now);
                }
                match sso_problem {
                    Some((login, state, problem)) => {
                        if sso_logged != Some(state) {
                            sso_logged = Some(state);
                            warn_sso_token(login, &problem, held.as_deref(), now);
                        } else {
                            tracing::debug!(%reason, "SSO token still not usable");
                        }
                        // Only a login (a new token file) helps now, or a refresh, which
                        // aws-config tries at most every 30 s: no point asking sooner.
                        let fingerprint = login.token_fingerprint().await;
                        Next::AfterOrRewritten(RETRY_MAX, login, fingerprint)
                    }
                    None => {
                        let after_sso = sso_logged.take().is_some();
                        if held.is_some() {
                            let reason = short(&reason);
                            tracing::warn!(%reason, retry_in_s, "refreshing AWS credentials failed; still signing with the valid ones held");
                        } else if missing_since == Some(now) || after_sso {
                            warn_no_credentials(&reason);
                        } else {
                            tracing::debug!(%reason, retry_in_s, "still no AWS credentials");
                        }
                        Next::After(wait)
                    }
                }
            }
        };
        let done = store.fetch_finished(now);
        let asked = wanted.wait_for(|wanted| *wanted > done);
        match next {
            Next::At(at) => {
                tokio::select! {
                    () = until(at) => {}
                    _ = asked => {}
                }
            }
            Next::After(wait) => {
                tokio::select! {
                    () = tokio::time::sleep(wait) => {}
                    _ = asked => {}
                }
            }
            Next::AfterOrRewritten(wait, login, fingerprint) => {
                tokio::select! {
                    () = tokio::time::sleep(wait) => {}
                    () = rewritten(login, fingerprint) => {}
                    _ = asked => {}
                }
            }
        }
    }
}

/// How often the token file is looked at while the SSO token is missing or expired: a login
/// is picked up this long after `aws sso login` at most. Reading one small local file.
pub const SSO_TOKEN_POLL: Duration = Duration::from_secs(2);

/// Completes once the token file's contents differ from `fingerprint`.
async fn rewritten(login: &SsoLogin, fingerprint: Option<u64>) {
    loop {
        tokio::time::sleep(SSO_TOKEN_POLL).await;
        if login.token_fingerprint().await != fingerprint {
            return;
        }
    }
}

/// The one line that says the SSO token is the problem and what to run, in place of the
/// SDK's error chain (which `RUST_LOG=aws_config=debug` shows).
fn warn_sso_token(
    login: &SsoLogin,
    problem: &str,
    held: Option<&HeldCredentials>,
    now: SystemTime,
) {
    let command = login.login_command();
    match held.and_then(|held| held.expiry) {
        Some(expiry) => {
            let expires_in_s = expiry.duration_since(now).unwrap_or_default().as_secs();
            tracing::warn!(
                profile = %login.profile,
                expires_in_s,
                "{problem}: run `{command}` before the credentials held expire (in {expires_in_s} s); `prime-sigv4-proxy doctor` checks the whole setup"
            );
        }
        None => tracing::warn!(
            profile = %login.profile,
            "{problem}: run `{command}`; requests get 503 until then; `prime-sigv4-proxy doctor` checks the whole setup"
        ),
    }
}

/// When the refresher fetches next.
enum Next<'a> {
    /// At this wall-clock time (the credentials' schedule).
    At(SystemTime),
    /// After this backoff.
    After(Duration),
    /// After this backoff, or as soon as the SSO token file no longer has this fingerprint.
    AfterOrRewritten(Duration, &'a SsoLogin, Option<u64>),
}

/// Completes once the wall clock reaches `at`, at most [`WALL_CLOCK_CHECK`] late even when
/// the machine slept meanwhile.
async fn until(at: SystemTime) {
    loop {
        let left = at.duration_since(SystemTime::now()).unwrap_or_default();
        if left.is_zero() {
            return;
        }
        tokio::time::sleep(left.min(WALL_CLOCK_CHECK)).await;
    }
}

/// What someone starting the proxy without credentials needs to know, in one line.
const HOW_TO_PROVIDE: &str = "AWS_PROFILE (after `aws sso login`), AWS_ACCESS_KEY_ID + AWS_SECRET_ACCESS_KEY, EKS IRSA or EKS Pod Identity; RUST_LOG=aws_config=debug shows each source's answer";

/// The one line that says the proxy has no credentials.
fn warn_no_credentials(reason: &str) {
    let message = "no AWS credentials: requests get 503 until some are found";
    match sources_tried(reason) {
        Some(tried) => tracing::warn!(tried = %tried, provide_with = HOW_TO_PROVIDE, "{message}"),
        None => {
            let reason = short(reason);
            tracing::warn!(%reason, provide_with = HOW_TO_PROVIDE, "{message}");
        }
    }
}

/// The sources the default chain tried, in plain words, when none of them had credentials:
/// aws-config lists them as `Attempted:` lines of `Name: why not`.
fn sources_tried(reason: &str) -> Option<String> {
    let (_, attempted) = reason.split_once("Attempted:")?;
    let names: Vec<&str> = attempted
        .lines()
        .skip(1)
        .take_while(|line| line.starts_with(' '))
        .filter_map(|line| line.trim().split_once(':').map(|(name, _)| name))
        .filter(|name| !name.is_empty() && !name.contains(' '))
        .map(|name| match name {
            "Environment" => "environment",
            "Profile" => "profile files",
            "WebIdentityToken" => "web identity (IRSA)",
            "EcsContainer" => "container endpoint (ECS, Pod Identity)",
            "Ec2InstanceMetadata" => "EC2 instance metadata",
            other => other,
        })
        .collect();
    (!names.is_empty()).then(|| names.join(", "))
}

/// A failure reason cut to one short line: the chain's errors can run to kilobytes (the
/// IMDS connector's debug dump); the whole text is in the DEBUG lines.
fn short(reason: &str) -> String {
    const MAX: usize = 240;
    let line = reason.split_whitespace().collect::<Vec<_>>().join(" ");
    if line.len() <= MAX {
        return line;
    }
    let mut end = MAX;
    while !line.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &line[..end])
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

/// Why the chain failed, in one plain line, and what to do (for `doctor`): the same words as
/// the WARN lines of the refresher. `reason` is the chain's error.
pub async fn explain_failure(reason: &str) -> String {
    let Some(login) = SsoLogin::of_selected_profile().await else {
        return format!("none found: {}", explain_missing(reason));
    };
    match login.problem(login.token_state().await) {
        Some(problem) => format!("{problem}: run `{}`", login.login_command()),
        None => format!(
            "profile `{}` (SSO): the token is valid, but: {}",
            login.profile,
            short(reason)
        ),
    }
}

/// Why the chain has no credentials, in one plain line, and how to provide some: the same
/// words as the WARN line at start.
pub fn explain_missing(reason: &str) -> String {
    let why = sources_tried(reason).map_or_else(|| short(reason), |tried| format!("tried {tried}"));
    format!("{why}; provide with {HOW_TO_PROVIDE}")
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

    /// What the scripted provider does on one call.
    #[derive(Debug, Clone, Copy)]
    enum Answer {
        /// Credentials with this key id, expiring this long after the call (wall clock).
        Key(&'static str, Duration),
        Fail,
        Hang,
    }

    /// A provider the test controls: answers from a script (then fails), counts its calls,
    /// and takes 50 ms (of tokio time) per call, so that requests overlap with a fetch.
    #[derive(Debug, Default)]
    struct Script {
        calls: std::sync::atomic::AtomicUsize,
        answers: std::sync::Mutex<std::collections::VecDeque<Answer>>,
    }

    #[derive(Debug)]
    struct Scripted(Arc<Script>);

    impl Script {
        fn new(answers: impl IntoIterator<Item = Answer>) -> Arc<Self> {
            let script = Arc::new(Script::default());
            script.answers.lock().unwrap().extend(answers);
            script
        }

        fn provider(self: &Arc<Self>) -> SharedCredentialsProvider {
            SharedCredentialsProvider::new(Scripted(Arc::clone(self)))
        }

        fn calls(&self) -> usize {
            self.calls.load(std::sync::atomic::Ordering::SeqCst)
        }
    }

    impl ProvideCredentials for Scripted {
        fn provide_credentials<'a>(
            &'a self,
        ) -> aws_credential_types::provider::future::ProvideCredentials<'a>
        where
            Self: 'a,
        {
            self.0
                .calls
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let answer = self.0.answers.lock().unwrap().pop_front();
            aws_credential_types::provider::future::ProvideCredentials::new(async move {
                tokio::time::sleep(Duration::from_millis(50)).await;
                match answer.unwrap_or(Answer::Fail) {
                    Answer::Key(id, lifetime) => Ok(Credentials::new(
                        id,
                        "scripted/secret",
                        Some("scripted-token".into()),
                        Some(SystemTime::now() + lifetime),
                        "script",
                    )),
                    Answer::Fail => Err(
                        aws_credential_types::provider::error::CredentialsError::not_loaded(
                            "scripted failure",
                        ),
                    ),
                    Answer::Hang => std::future::pending().await,
                }
            })
        }
    }

    fn key_of(held: &HeldCredentials) -> String {
        // The signer keeps the key id private; its Debug shows it (and redacts the secret).
        let debug = format!("{:?}", held.identity);
        ["AKIDBEFORESLEEP", "AKIDAFTERWAKE", "AKIDAFTERSCHEDULE"]
            .into_iter()
            .find(|key| debug.contains(key))
            .unwrap_or("unknown")
            .to_owned()
    }

    /// A laptop suspend, as the proxy sees it: the wall clock moves on, tokio's clock (paused
    /// in these tests, monotonic in production, which stops during suspend) does not.
    fn suspend(duration: Duration) {
        std::thread::sleep(duration);
    }

    const WAIT: Duration = Duration::from_secs(5);

    #[tokio::test(start_paused = true)]
    async fn requests_after_a_sleep_share_one_refresh_and_get_the_new_key() {
        let script = Script::new([
            Answer::Key("AKIDBEFORESLEEP", Duration::from_millis(300)),
            Answer::Key("AKIDAFTERWAKE", Duration::from_secs(3600)),
        ]);
        let store = CredentialStore::new();
        let refresher = tokio::spawn(refresh_forever(script.provider(), None, Arc::clone(&store)));
        let before = store.valid_or_first(WAIT).await.unwrap();
        assert_eq!(key_of(&before), "AKIDBEFORESLEEP");
        assert_eq!(script.calls(), 1);

        suspend(Duration::from_millis(400));
        assert!(
            store.valid(SystemTime::now()).is_none(),
            "expired by the wall clock"
        );
        let woke = tokio::time::Instant::now();
        let requests: Vec<_> = (0..20)
            .map(|_| {
                let store = Arc::clone(&store);
                tokio::spawn(async move { store.valid_or_first(WAIT).await })
            })
            .collect();
        for request in requests {
            let held = request.await.unwrap().expect("signed, not 503");
            assert_eq!(key_of(&held), "AKIDAFTERWAKE");
        }
        assert_eq!(script.calls(), 2, "one fetch for all 20 requests");
        assert_eq!(
            woke.elapsed(),
            Duration::from_millis(50),
            "the one fetch's time"
        );
        refresher.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn the_refresher_follows_the_wall_clock_across_a_sleep() {
        // Refreshed half-way: 2 s after the fetch by the wall clock.
        let script = Script::new([
            Answer::Key("AKIDBEFORESLEEP", Duration::from_secs(4)),
            Answer::Key("AKIDAFTERSCHEDULE", Duration::from_secs(3600)),
        ]);
        let store = CredentialStore::new();
        let refresher = tokio::spawn(refresh_forever(script.provider(), None, Arc::clone(&store)));
        store.valid_or_first(WAIT).await.unwrap();

        suspend(Duration::from_millis(2_200));
        // No request: within one wall-clock check the refresher notices on its own. A timer
        // set for 2 s of monotonic time would still have most of a second to go.
        tokio::time::sleep(WALL_CLOCK_CHECK + Duration::from_millis(500)).await;
        assert_eq!(script.calls(), 2);
        let held = store.valid(SystemTime::now()).unwrap();
        assert_eq!(key_of(&held), "AKIDAFTERSCHEDULE");
        refresher.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn a_refresh_that_fails_after_a_sleep_is_not_repeated_by_every_request() {
        let script = Script::new([
            Answer::Key("AKIDBEFORESLEEP", Duration::from_millis(300)),
            Answer::Fail,
        ]);
        let store = CredentialStore::new();
        let refresher = tokio::spawn(refresh_forever(script.provider(), None, Arc::clone(&store)));
        store.valid_or_first(WAIT).await.unwrap();

        suspend(Duration::from_millis(400));
        let requests: Vec<_> = (0..20)
            .map(|_| {
                let store = Arc::clone(&store);
                tokio::spawn(async move { store.valid_or_first(WAIT).await })
            })
            .collect();
        for request in requests {
            assert!(request.await.unwrap().is_err());
        }
        assert_eq!(script.calls(), 2);
        // Later requests fail at once; the refresher's backoff decides the next fetch.
        let asked = tokio::time::Instant::now();
        for _ in 0..20 {
            assert!(store.valid_or_first(WAIT).await.is_err());
        }
        assert_eq!(asked.elapsed(), Duration::ZERO);
        assert_eq!(script.calls(), 2);
        tokio::time::sleep(RETRY_FIRST + Duration::from_millis(100)).await;
        assert_eq!(script.calls(), 3, "retried after the first backoff");
        refresher.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn a_hanging_refresh_holds_requests_no_longer_than_the_wait() {
        let script = Script::new([
            Answer::Key("AKIDBEFORESLEEP", Duration::from_millis(300)),
            Answer::Hang,
        ]);
        let store = CredentialStore::new();
        let refresher = tokio::spawn(refresh_forever(script.provider(), None, Arc::clone(&store)));
        store.valid_or_first(WAIT).await.unwrap();

        suspend(Duration::from_millis(400));
        let requests: Vec<_> = (0..20)
            .map(|_| {
                let store = Arc::clone(&store);
                tokio::spawn(async move {
                    let asked = tokio::time::Instant::now();
                    let result = store.valid_or_first(WAIT).await;
                    (result.is_err(), asked.elapsed())
                })
            })
            .collect();
        for request in requests {
            assert_eq!(request.await.unwrap(), (true, WAIT));
        }
        assert_eq!(script.calls(), 2);
        refresher.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn without_any_credentials_requests_fail_at_once_after_the_first_fetch() {
        let script = Script::new([Answer::Fail]);
        let store = CredentialStore::new();
        let refresher = tokio::spawn(refresh_forever(script.provider(), None, Arc::clone(&store)));
        let started = tokio::time::Instant::now();
        assert!(store.valid_or_first(WAIT).await.is_err());
        assert_eq!(
            started.elapsed(),
            Duration::from_millis(50),
            "waited for the first"
        );
        let asked = tokio::time::Instant::now();
        assert!(store.valid_or_first(WAIT).await.is_err());
        assert_eq!(asked.elapsed(), Duration::ZERO);
        assert_eq!(script.calls(), 1);
        refresher.abort();
    }

    /// The default chain's error with nothing configured and IMDS refusing connections, as
    /// aws-config 1.x writes it.
    const NOTHING_FOUND: &str = "the credential provider was not enabled: no credentials found in chain. Attempted:\n  Environment: the credential provider was not enabled: environment variable not set\n  Profile: the credential provider was not enabled\n  WebIdentityToken: the credential provider was not enabled: $AWS_WEB_IDENTITY_TOKEN_FILE was not set\n  EcsContainer: the credential provider was not enabled: ECS provider not configured\n  Ec2InstanceMetadata: the credential provider was not enabled: could not communicate with IMDS: dispatch failure: io error: client error (Connect): tcp connect error: Connection refused (os error 111)";

    #[test]
    fn the_sources_tried_are_named_in_plain_words() {
        assert_eq!(
            sources_tried(NOTHING_FOUND).as_deref(),
            Some("environment, profile files, web identity (IRSA), container endpoint (ECS, Pod Identity), EC2 instance metadata")
        );
        assert_eq!(sources_tried("dispatch failure: io error"), None);
    }

    #[test]
    fn reasons_are_cut_to_one_short_line() {
        let reason = short(NOTHING_FOUND);
        assert!(!reason.contains('\n'));
        assert!(reason.len() <= 240 + '…'.len_utf8(), "{}", reason.len());
        assert!(reason.ends_with('…'));
        assert_eq!(
            short("profile  `dev`\nnot found"),
            "profile `dev` not found"
        );
        let wide = "é".repeat(200);
        assert!(short(&wide).ends_with('…'));
    }

    #[test]
    fn backoff_doubles_and_is_capped() {
        assert_eq!(retry_delay(0), Duration::from_millis(500));
        assert_eq!(retry_delay(1), Duration::from_secs(1));
        assert_eq!(retry_delay(3), Duration::from_secs(4));
        assert_eq!(retry_delay(40), RETRY_MAX);
    }
}
