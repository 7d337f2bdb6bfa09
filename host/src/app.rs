//! The Application: what a tap file holds and what `save` writes.
//!
//! The envelope (name, uid/gid, the list of services with their endpoints) belongs to the host;
//! each service's `config` and `state` belong to its plugin, which decodes them strictly. They are
//! kept here as JSON values so that the host never needs to know a plugin's types.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::endpoint::Endpoint;

/// The newest tap format version this host reads and the one it writes.
pub const TAP_VERSION: u32 = 1;

/// A whole application: one process's worth of services.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Application {
    pub version: u32,
    /// Names the files: `<name>.tap`, `<name>-shutdown.tap`, `<name>-<tag>.tap`.
    pub name: String,
    #[serde(default)]
    pub uid: Option<Principal>,
    #[serde(default)]
    pub gid: Option<Principal>,
    #[serde(default)]
    pub services: Vec<ServiceSpec>,
}

/// One service of an application: which plugin runs it, where it listens and how it is set up.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceSpec {
    /// Unique within the application.
    pub name: String,
    pub plugin: String,
    #[serde(default)]
    pub listen: Vec<Endpoint>,
    /// The plugin's configuration, decoded strictly by the plugin's own config type.
    #[serde(default = "empty_object")]
    pub config: serde_json::Value,
    /// What the service asked to keep across restarts (saved at shutdown).
    #[serde(default)]
    pub state: Option<serde_json::Value>,
}

fn empty_object() -> serde_json::Value {
    serde_json::Value::Object(serde_json::Map::new())
}

/// A user or group as given to `mktap --uid/--gid`: kept as written, resolved when twistd starts,
/// so that a tap made on one machine names the same account on another.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Principal {
    Id(u32),
    Name(String),
}

impl Principal {
    /// Parses a command-line value: all digits is an id, anything else a name.
    pub fn parse(s: &str) -> Result<Self, String> {
        if s.is_empty() {
            return Err("empty user or group".into());
        }
        if s.bytes().all(|b| b.is_ascii_digit()) {
            s.parse()
                .map(Principal::Id)
                .map_err(|_| format!("id '{s}' is out of range"))
        } else if s.contains(|c: char| c == ':' || c.is_whitespace() || c.is_control()) {
            Err(format!("'{s}' is not a valid user or group name"))
        } else {
            Ok(Principal::Name(s.to_string()))
        }
    }
}

impl fmt::Display for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Principal::Id(id) => write!(f, "{id}"),
            Principal::Name(name) => f.write_str(name),
        }
    }
}

impl Application {
    /// An application with no services, in the current format version.
    pub fn new(name: impl Into<String>) -> Self {
        Application {
            version: TAP_VERSION,
            name: name.into(),
            uid: None,
            gid: None,
            services: Vec::new(),
        }
    }

    pub fn service(&self, name: &str) -> Option<&ServiceSpec> {
        self.services.iter().find(|s| s.name == name)
    }

    /// A service name not yet used: `base`, then `base-2`, `base-3`, ...
    pub fn unique_service_name(&self, base: &str) -> String {
        if self.service(base).is_none() {
            return base.to_string();
        }
        (2..)
            .map(|n| format!("{base}-{n}"))
            .find(|candidate| self.service(candidate).is_none())
            .expect("an unbounded range always yields a free name")
    }

    /// Problems with the envelope itself (not with any plugin's config): empty or duplicate
    /// names, and two services on one endpoint.
    pub fn envelope_problems(&self) -> Vec<String> {
        self.envelope_problems_at()
            .into_iter()
            .map(|(_, problem)| problem)
            .collect()
    }

    /// [`Application::envelope_problems`], each with the path of the value it is about
    /// (`name`, `services[1].name`, `services[2].listen[0]`), to find it in a tap's text.
    pub fn envelope_problems_at(&self) -> Vec<(String, String)> {
        let mut problems = Vec::new();
        if !valid_name(&self.name) {
            problems.push((
                "name".to_string(),
                format!(
                    "application name '{}' must be non-empty and use only letters, digits, '.', '-' and '_'",
                    self.name
                ),
            ));
        }
        for (i, service) in self.services.iter().enumerate() {
            let at = format!("services[{i}].name");
            if !valid_name(&service.name) {
                problems.push((
                    at.clone(),
                    format!(
                        "service name '{}' must be non-empty and use only letters, digits, '.', '-' and '_'",
                        service.name
                    ),
                ));
            }
            if self.services[..i].iter().any(|s| s.name == service.name) {
                problems.push((at, format!("two services are named '{}'", service.name)));
            }
        }
        let endpoints: Vec<(usize, usize, &Endpoint)> = self
            .services
            .iter()
            .enumerate()
            .flat_map(|(i, s)| s.listen.iter().enumerate().map(move |(j, e)| (i, j, e)))
            .collect();
        for (k, (i, j, endpoint)) in endpoints.iter().enumerate() {
            if let Some((earlier, _, _)) = endpoints[..k]
                .iter()
                .find(|(_, _, e)| e.conflicts_with(endpoint))
            {
                let (service, earlier) = (&self.services[*i].name, &self.services[*earlier].name);
                problems.push((
                    format!("services[{i}].listen[{j}]"),
                    format!(
                        "service '{service}' listens on {endpoint}, which service '{earlier}' already uses"
                    ),
                ));
            }
        }
        problems
    }
}

/// The longest service or application name (and save tag), in bytes.
pub const MAX_NAME_LEN: usize = 64;

/// Names end up in file names and log lines, so they are kept to a safe alphabet.
pub fn valid_name(name: &str) -> bool {
    name_problem(name).is_none()
}

/// What is wrong with a name (or save tag), if anything: `tag 'x': {problem}`.
pub fn name_problem(name: &str) -> Option<String> {
    if name.is_empty() {
        Some("it is empty".into())
    } else if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
    {
        Some("use only letters, digits, '.', '-' and '_'".into())
    } else if name.len() > MAX_NAME_LEN {
        Some(format!(
            "it is {} characters long, at most {MAX_NAME_LEN} are allowed",
            name.len()
        ))
    } else if name.starts_with(['.', '-']) {
        Some("it must not start with '.' or '-'".into())
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str, listen: &[&str]) -> ServiceSpec {
        ServiceSpec {
            name: name.into(),
            plugin: "web".into(),
            listen: listen
                .iter()
                .map(|s| s.parse().expect("test endpoint"))
                .collect(),
            config: empty_object(),
            state: None,
        }
    }

    #[test]
    fn unique_names_count_up() {
        let mut app = Application::new("demo");
        assert_eq!(app.unique_service_name("web"), "web");
        app.services.push(spec("web", &[]));
        assert_eq!(app.unique_service_name("web"), "web-2");
        app.services.push(spec("web-2", &[]));
        assert_eq!(app.unique_service_name("web"), "web-3");
    }

    #[test]
    fn shared_endpoints_are_problems() {
        let mut app = Application::new("demo");
        app.services.push(spec("a", &["tcp:8080"]));
        app.services
            .push(spec("b", &["tcp:8080:interface=127.0.0.1"]));
        let problems = app.envelope_problems();
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].contains("service 'b' listens on tcp:8080:interface=127.0.0.1"));
    }

    #[test]
    fn port_zero_never_conflicts() {
        let mut app = Application::new("demo");
        app.services.push(spec("a", &["tcp:0", "tcp:0"]));
        app.services.push(spec("b", &["tcp:0"]));
        assert!(app.envelope_problems().is_empty());
    }

    #[test]
    fn duplicate_endpoint_in_one_service() {
        let mut app = Application::new("demo");
        app.services.push(spec("a", &["tcp:80", "80"]));
        assert_eq!(app.envelope_problems().len(), 1);
    }

    #[test]
    fn principals_parse() {
        assert_eq!(Principal::parse("0"), Ok(Principal::Id(0)));
        assert_eq!(
            Principal::parse("www-data"),
            Ok(Principal::Name("www-data".into()))
        );
        assert!(Principal::parse("").is_err());
        assert!(Principal::parse("99999999999").is_err());
        assert!(Principal::parse("a:b").is_err());
    }
}
