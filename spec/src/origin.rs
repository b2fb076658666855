//! Where each part of a loaded project came from: [`Origin`] maps services and their
//! attributes to the file that wrote them. Loading builds it while it merges files;
//! profiles and validation read it so that a problem in the merged project names the
//! file to fix.

use std::collections::BTreeMap;

use serde_norway::Value;

/// Which file each service and each of its attributes came from, so that a problem
/// found in the merged project names the file to fix.
#[derive(Debug, Default, Clone)]
pub(crate) struct Origin {
    /// The file that first defined each service.
    services: BTreeMap<String, String>,
    /// The file that last wrote each (service, top-level attribute).
    attrs: BTreeMap<(String, String), String>,
}

impl Origin {
    /// Records the services of a file; their attributes too when several files may
    /// write to one service (`per_attribute`), the only case where they can differ.
    pub(crate) fn record(&mut self, value: &Value, file: &str, per_attribute: bool) {
        let Some(Value::Mapping(services)) = value.get("services") else {
            return;
        };
        for (name, svc) in services {
            let Some(name) = name.as_str() else { continue };
            self.services
                .entry(name.to_string())
                .or_insert_with(|| file.to_string());
            if let (true, Value::Mapping(attrs)) = (per_attribute, svc) {
                for attr in attrs.keys().filter_map(Value::as_str) {
                    self.attrs
                        .insert((name.to_string(), attr.to_string()), file.to_string());
                }
            }
        }
    }

    /// Adds what another tree (an included project) knows, without overriding.
    pub(crate) fn absorb(&mut self, other: Origin) {
        for (k, v) in other.services {
            self.services.entry(k).or_insert(v);
        }
        for (k, v) in other.attrs {
            self.attrs.entry(k).or_insert(v);
        }
    }

    /// The file to blame for `services.<service>.<attr...>`.
    pub fn file(&self, service: &str, attr: &str) -> Option<&str> {
        let top = attr.split(['.', '[']).next().unwrap_or_default();
        self.attrs
            .get(&(service.to_string(), top.to_string()))
            .or_else(|| self.services.get(service))
            .map(String::as_str)
    }
}
