//! The SSO login the selected AWS profile relies on, and the state of the token the AWS CLI
//! caches for it under `~/.aws/sso/cache/`: what to tell a user whose token is missing or
//! expired, and when a new one has been written.
//!
//! aws-config fetches the credentials (its SSO provider reads the same file and refreshes the
//! token through SSO OIDC when it can); its errors are a chain of SDK messages. This module
//! reads the file itself so that the proxy can say, in one plain line, which profile needs
//! `aws sso login`, and notice the login without a restart.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use aws_config::profile::ProfileSet;
use aws_runtime::env_config::file::EnvConfigFiles;
use aws_smithy_types::date_time::{DateTime, Format};
use aws_types::os_shim_internal::{Env, Fs};

/// `source_profile` hops followed to find the profile holding the SSO settings (the AWS CLI
/// refuses longer chains long before this).
const MAX_SOURCE_PROFILES: usize = 8;

/// The SSO login behind the selected profile.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SsoLogin {
    /// The profile holding the SSO settings: the one `aws sso login --profile` takes (the
    /// selected profile, or the `source_profile` it assumes a role from).
    pub profile: String,
    /// The token file `aws sso login` writes for this profile.
    pub token_file: PathBuf,
}

/// What the cached token file says, read without its secrets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenState {
    Missing,
    Expired,
    Unreadable,
    Valid,
}

impl SsoLogin {
    /// The login behind the profile aws-config selects (`AWS_PROFILE`, else `default`), from
    /// the same files it reads (`AWS_CONFIG_FILE`, `AWS_SHARED_CREDENTIALS_FILE`, or
    /// `~/.aws/config` and `~/.aws/credentials`). `None` when that profile uses no SSO, or the
    /// files cannot be read (aws-config then says why).
    pub async fn of_selected_profile() -> Option<Self> {
        let profiles =
            aws_config::profile::load(&Fs::real(), &Env::real(), &EnvConfigFiles::default(), None)
                .await
                .ok()?;
        Self::of(&profiles, &home_dir()?)
    }

    /// The login behind `profiles`' selected profile, its token cached under `home`.
    fn of(profiles: &ProfileSet, home: &Path) -> Option<Self> {
        let mut name = profiles.selected_profile();
        for _ in 0..MAX_SOURCE_PROFILES {
            let profile = profiles.get_profile(name)?;
            // The AWS CLI names the file after the session when there is one, else after the
            // start URL (the legacy form).
            let identifier = profile
                .get("sso_session")
                .or_else(|| profile.get("sso_start_url"));
            if let Some(identifier) = identifier {
                return Some(Self {
                    profile: name.to_owned(),
                    token_file: token_file(home, identifier),
                });
            }
            match profile.get("source_profile") {
                Some(source) if source != name => name = source,
                _ => return None,
            }
        }
        None
    }

    /// The token file's state now (reads the file: call it off the request path).
    pub async fn token_state(&self) -> TokenState {
        let path = self.token_file.clone();
        tokio::task::spawn_blocking(move || read_token_state(&path, SystemTime::now()))
            .await
            .unwrap_or(TokenState::Unreadable)
    }

    /// A digest of the token file's contents (`None` while it does not exist), to notice that
    /// `aws sso login` wrote a new one.
    pub async fn token_fingerprint(&self) -> Option<u64> {
        let path = self.token_file.clone();
        tokio::task::spawn_blocking(move || {
            let contents = std::fs::read(path).ok()?;
            let mut hasher = std::collections::hash_map::DefaultHasher::new();
            contents.hash(&mut hasher);
            Some(hasher.finish())
        })
        .await
        .ok()
        .flatten()
    }

    /// What is wrong with the token, in words, when something is.
    pub fn problem(&self, state: TokenState) -> Option<String> {
        let what = match state {
            TokenState::Missing => "is missing",
            TokenState::Expired => "has expired",
            TokenState::Unreadable => "cannot be read",
            TokenState::Valid => return None,
        };
        Some(format!(
            "the SSO token of profile `{}` {what} ({})",
            self.profile,
            self.token_file.display()
        ))
    }

    /// The command that writes a new token.
    pub fn login_command(&self) -> String {
        format!("aws sso login --profile {}", self.profile)
    }
}

/// `~/.aws/sso/cache/<sha1 of identifier>.json`, as the AWS CLI and aws-config name it.
fn token_file(home: &Path, identifier: &str) -> PathBuf {
    let digest = aws_lc_rs::digest::digest(
        &aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY,
        identifier.as_bytes(),
    );
    let hex: String = digest
        .as_ref()
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect();
    home.join(".aws")
        .join("sso")
        .join("cache")
        .join(format!("{hex}.json"))
}

/// The home directory aws-config uses for `~/.aws`.
fn home_dir() -> Option<PathBuf> {
    let var = if cfg!(windows) { "USERPROFILE" } else { "HOME" };
    std::env::var_os(var)
        .filter(|home| !home.is_empty())
        .map(PathBuf::from)
}

/// The one field of the cached token this module reads; the tokens in the file are skipped.
#[derive(serde::Deserialize)]
struct CachedToken {
    #[serde(rename = "expiresAt")]
    expires_at: String,
}

fn read_token_state(path: &Path, now: SystemTime) -> TokenState {
    let contents = match std::fs::read(path) {
        Ok(contents) => contents,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return TokenState::Missing,
        Err(_) => return TokenState::Unreadable,
    };
    let Ok(token) = serde_json::from_slice::<CachedToken>(&contents) else {
        return TokenState::Unreadable;
    };
    let expires_at = DateTime::from_str(&token.expires_at, Format::DateTime)
        .ok()
        .and_then(|at| SystemTime::try_from(at).ok());
    match expires_at {
        None => TokenState::Unreadable,
        Some(at) if at <= now => TokenState::Expired,
        Some(_) => TokenState::Valid,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn token_files_are_named_as_the_aws_cli_names_them() {
        // aws-config's own cases: a session name and a legacy start URL.
        assert_eq!(
            token_file(Path::new("/home/someuser"), "dev-scopes"),
            Path::new(
                "/home/someuser/.aws/sso/cache/75e4d41276d8bd17f85986fc6cccef29fd725ce3.json"
            )
        );
        assert_eq!(
            token_file(
                Path::new("/home/me"),
                "https://d-92671207e4.awsapps.com/start"
            ),
            Path::new("/home/me/.aws/sso/cache/13f9d35043871d073ab260e020f0ffde092cb14b.json")
        );
    }

    #[test]
    fn the_token_state_comes_from_expires_at() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.json");
        let now = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000);
        assert_eq!(read_token_state(&path, now), TokenState::Missing);
        std::fs::write(
            &path,
            r#"{"accessToken":"x","expiresAt":"2023-11-14T22:13:21Z"}"#,
        )
        .unwrap();
        assert_eq!(read_token_state(&path, now), TokenState::Valid);
        std::fs::write(
            &path,
            r#"{"accessToken":"x","expiresAt":"2023-11-14T22:13:20Z"}"#,
        )
        .unwrap();
        assert_eq!(read_token_state(&path, now), TokenState::Expired);
        std::fs::write(&path, r#"{"accessToken":"x"}"#).unwrap();
        assert_eq!(read_token_state(&path, now), TokenState::Unreadable);
    }
}
