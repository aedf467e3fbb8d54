//! What the bytes of a component are: a valid Wasm component (what the
//! controller accepts on upload), and what it imports and exports (what
//! `skiff build` reports and checks before a deploy).

use std::collections::BTreeSet;

/// Checks that `bytes` are a valid Wasm component, with wasmparser's own
/// message when they are not.
pub fn validate_component(bytes: &[u8]) -> Result<(), String> {
    if !wasmparser::Parser::is_component(bytes) {
        return Err(if wasmparser::Parser::is_core_wasm(bytes) {
            "this is a core Wasm module, not a component (build for wasm32-wasip2)".to_owned()
        } else {
            "not a Wasm component (bad magic number or version)".to_owned()
        });
    }
    let mut validator = wasmparser::Validator::new_with_features(wasmparser::WasmFeatures::all());
    validator
        .validate_all(bytes)
        .map(drop)
        .map_err(|e| e.to_string())
}

/// Whether bytes starting with `head` are a component (by its header).
pub fn looks_like_component(head: &[u8]) -> bool {
    wasmparser::Parser::is_component(head)
}

/// A component's top-level imports and exports, by name, sorted.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Interface {
    /// Interfaces it imports, e.g. `wasi:http/types@0.2.6`.
    pub imports: Vec<String>,
    /// Interfaces it exports, e.g. `wasi:http/incoming-handler@0.2.6`.
    pub exports: Vec<String>,
}

impl Interface {
    /// Reads the top-level import and export sections (nested components
    /// and modules are skipped).
    pub fn of(bytes: &[u8]) -> Self {
        let (mut imports, mut exports) = (BTreeSet::new(), BTreeSet::new());
        let mut depth = 0usize;
        for payload in wasmparser::Parser::new(0).parse_all(bytes).flatten() {
            match payload {
                wasmparser::Payload::ModuleSection { .. }
                | wasmparser::Payload::ComponentSection { .. } => depth += 1,
                wasmparser::Payload::End(_) => depth = depth.saturating_sub(1),
                wasmparser::Payload::ComponentImportSection(section) if depth == 0 => {
                    imports.extend(
                        section
                            .into_iter()
                            .flatten()
                            .map(|i| i.name.name.to_owned()),
                    );
                }
                wasmparser::Payload::ComponentExportSection(section) if depth == 0 => {
                    exports.extend(
                        section
                            .into_iter()
                            .flatten()
                            .map(|e| e.name.name.to_owned()),
                    );
                }
                _ => {}
            }
        }
        Self {
            imports: imports.into_iter().collect(),
            exports: exports.into_iter().collect(),
        }
    }

    /// Whether it serves HTTP: it exports `wasi:http/incoming-handler`.
    pub fn serves_http(&self) -> bool {
        self.exports
            .iter()
            .any(|e| e.starts_with("wasi:http/incoming-handler"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modules_and_garbage_are_not_components() {
        let module = b"\0asm\x01\0\0\0";
        assert!(
            validate_component(module)
                .unwrap_err()
                .contains("core Wasm module")
        );
        assert!(
            validate_component(b"hello")
                .unwrap_err()
                .contains("bad magic")
        );
        assert!(!looks_like_component(module));
        assert_eq!(Interface::of(b"hello"), Interface::default());
    }
}
