//! Marketplace → Prime region: which endpoint a request goes to and which region signs it.
//!
//! The table is the only place upstream hosts come from, so the proxy cannot be used as an
//! open proxy: a client chooses a marketplace, never a host.

use std::collections::BTreeMap;
use std::sync::Arc;

use http::uri::Scheme;
use http::{HeaderMap, HeaderValue};

use crate::config::RegionConfig;

/// One Prime region, ready for the request path.
#[derive(Debug)]
pub struct Region {
    /// Position in the table's region list: the index of this region's upstream stack.
    pub index: usize,
    /// The configuration's key (`na`, `eu`, `fe`, …), used as the metrics label.
    pub key: Arc<str>,
    /// The `Host` header sent upstream and signed: the authority without a default port.
    pub host: HeaderValue,
    /// `scheme://authority`, the prefix of every upstream URI.
    pub origin: String,
    pub signing_region: String,
}

/// Why a request has no region.
#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    #[error("the x-amz-marketplace header is missing or empty")]
    MissingMarketplace,
    #[error("marketplace {marketplace:?} is not served by any configured region")]
    UnknownMarketplace { marketplace: String },
    #[error("send exactly one x-amz-marketplace header (this request has {count})")]
    SeveralMarketplaces { count: usize },
    #[error("the x-amz-marketplace header is not visible ASCII")]
    BadMarketplace,
}

/// The marketplaces of every configured region.
#[derive(Debug)]
pub struct MarketplaceTable {
    /// (upper-case marketplace code, region). Seventeen entries by default: a linear scan
    /// with a case-insensitive compare beats hashing an upper-cased copy.
    entries: Vec<(String, Arc<Region>)>,
    regions: Vec<Arc<Region>>,
}

impl MarketplaceTable {
    /// Builds the table from validated configuration.
    ///
    /// Endpoints were checked by `config`; a failure here would be a bug in that validation,
    /// so it is reported rather than panicking.
    pub fn new(regions: &BTreeMap<String, RegionConfig>) -> Result<Self, String> {
        let mut table = MarketplaceTable {
            entries: Vec::new(),
            regions: Vec::new(),
        };
        for (index, (key, config)) in regions.iter().enumerate() {
            let uri: http::Uri = config
                .endpoint
                .parse()
                .map_err(|e| format!("regions.{key}.endpoint: {e}"))?;
            let scheme = uri
                .scheme()
                .cloned()
                .ok_or_else(|| format!("regions.{key}.endpoint has no scheme"))?;
            let authority = uri
                .authority()
                .cloned()
                .ok_or_else(|| format!("regions.{key}.endpoint has no host"))?;
            let default_port = if scheme == Scheme::HTTPS { 443 } else { 80 };
            let host = match authority.port_u16() {
                Some(port) if port != default_port => authority.as_str().to_owned(),
                _ => authority.host().to_owned(),
            };
            let host = HeaderValue::from_str(&host)
                .map_err(|e| format!("regions.{key}.endpoint host: {e}"))?;
            let region = Arc::new(Region {
                index,
                key: Arc::from(key.as_str()),
                origin: format!("{scheme}://{authority}"),
                host,
                signing_region: config.signing_region.clone(),
            });
            for marketplace in &config.marketplaces {
                table
                    .entries
                    .push((marketplace.trim().to_ascii_uppercase(), Arc::clone(&region)));
            }
            table.regions.push(region);
        }
        Ok(table)
    }

    /// Every region, in index order (one upstream stack is built for each).
    pub fn regions(&self) -> &[Arc<Region>] {
        &self.regions
    }

    /// The region for the request's one `x-amz-marketplace` header, in any letter case.
    ///
    /// Two or more headers, even equal ones, are refused: Prime would receive a signature
    /// over the joined values while the proxy routed by one of them.
    pub fn route(&self, headers: &HeaderMap) -> Result<&Arc<Region>, RouteError> {
        let mut values = headers
            .get_all(crate::prepare::X_AMZ_MARKETPLACE.clone())
            .iter();
        let first = values.next();
        let more = values.count();
        if more > 0 {
            return Err(RouteError::SeveralMarketplaces { count: more + 1 });
        }
        self.route_value(first)
    }

    /// The region for one `x-amz-marketplace` value.
    pub fn route_value(
        &self,
        marketplace: Option<&HeaderValue>,
    ) -> Result<&Arc<Region>, RouteError> {
        let raw = marketplace.map(HeaderValue::as_bytes).unwrap_or_default();
        if !raw
            .iter()
            .all(|&b| b == b' ' || b == b'\t' || b.is_ascii_graphic())
        {
            return Err(RouteError::BadMarketplace);
        }
        let code = raw.trim_ascii();
        if code.is_empty() {
            return Err(RouteError::MissingMarketplace);
        }
        self.entries
            .iter()
            .find(|(known, _)| known.as_bytes().eq_ignore_ascii_case(code))
            .map(|(_, region)| region)
            .ok_or_else(|| RouteError::UnknownMarketplace {
                marketplace: String::from_utf8_lossy(code).chars().take(16).collect(),
            })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::config::Config;

    fn table() -> MarketplaceTable {
        MarketplaceTable::new(&Config::default().regions).unwrap()
    }

    #[test]
    fn every_default_marketplace_routes_to_its_region_in_any_case() {
        let expected = [
            (
                "na",
                "prime-apis.amazon.com",
                "us-east-1",
                &["US", "CA", "MX"][..],
            ),
            (
                "eu",
                "prime-apis.amazon.eu",
                "eu-west-1",
                &[
                    "UK", "FR", "IT", "ES", "IN", "AE", "SA", "EG", "NL", "DE", "TR",
                ][..],
            ),
            (
                "fe",
                "prime-apis.amazon.jp",
                "us-west-2",
                &["JP", "SG", "AU"][..],
            ),
        ];
        let table = table();
        let mut count = 0;
        for (key, host, signing_region, marketplaces) in expected {
            for code in marketplaces {
                for spelling in [
                    code.to_string(),
                    code.to_lowercase(),
                    format!(" {} ", code[..1].to_lowercase() + &code[1..]),
                ] {
                    let region = table
                        .route_value(Some(&HeaderValue::from_str(&spelling).unwrap()))
                        .unwrap();
                    assert_eq!(&*region.key, key, "{spelling}");
                    assert_eq!(region.host, host);
                    assert_eq!(region.signing_region, signing_region);
                    assert_eq!(region.origin, format!("https://{host}"));
                }
                count += 1;
            }
        }
        assert_eq!(count, 17);
    }

    #[test]
    fn missing_empty_and_unknown_marketplaces_are_refused() {
        let table = table();
        assert!(matches!(
            table.route_value(None),
            Err(RouteError::MissingMarketplace)
        ));
        assert!(matches!(
            table.route_value(Some(&HeaderValue::from_static("  "))),
            Err(RouteError::MissingMarketplace)
        ));
        assert!(matches!(
            table.route_value(Some(&HeaderValue::from_static("GB"))),
            Err(RouteError::UnknownMarketplace { .. })
        ));
        assert!(matches!(
            table.route_value(Some(&HeaderValue::from_static("USA"))),
            Err(RouteError::UnknownMarketplace { .. })
        ));
    }

    #[test]
    fn exactly_one_visible_ascii_marketplace_header_is_accepted() {
        let table = table();
        let mut headers = HeaderMap::new();
        headers.append("x-amz-marketplace", HeaderValue::from_static("US"));
        assert_eq!(&*table.route(&headers).unwrap().key, "na");
        headers.append("x-amz-marketplace", HeaderValue::from_static("US"));
        assert!(matches!(
            table.route(&headers),
            Err(RouteError::SeveralMarketplaces { count: 2 })
        ));
        let mut latin1 = HeaderMap::new();
        latin1.append(
            "x-amz-marketplace",
            HeaderValue::from_bytes(b"D\xc9").unwrap(),
        );
        assert!(matches!(
            table.route(&latin1),
            Err(RouteError::BadMarketplace)
        ));
        assert!(matches!(
            table.route(&HeaderMap::new()),
            Err(RouteError::MissingMarketplace)
        ));
    }

    #[test]
    fn a_non_default_port_is_part_of_the_host_header() {
        let config = Config::from_toml(
            "[upstream]\nallow_plain_http = true\n[regions.na]\nendpoint = \"http://127.0.0.1:8443\"\n",
        )
        .unwrap();
        let table = MarketplaceTable::new(&config.regions).unwrap();
        let region = table
            .route_value(Some(&HeaderValue::from_static("us")))
            .unwrap();
        assert_eq!(region.host, "127.0.0.1:8443");
        assert_eq!(region.origin, "http://127.0.0.1:8443");
        // [regions.na] with only `endpoint` keeps the built-in signing region and marketplaces.
        assert_eq!(region.signing_region, "us-east-1");
        let explicit =
            Config::from_toml("[regions.na]\nendpoint = \"https://x.example:443\"\n").unwrap();
        let table = MarketplaceTable::new(&explicit.regions).unwrap();
        assert_eq!(
            table
                .route_value(Some(&HeaderValue::from_static("MX")))
                .unwrap()
                .host,
            "x.example"
        );
    }
}
