//! `greeter`: a library component that exports `example:greeting/greeter`
//! and imports nothing Skiff's host must provide for it. It is not an app:
//! `greet` names it in `[dependencies]`, and `skiff build` composes it into
//! greet's component.

wit_bindgen::generate!({ path: "wit", world: "provider" });

struct Greeter;

impl exports::example::greeting::greeter::Guest for Greeter {
    fn greet(name: String) -> String {
        format!("Hello, {name}! (greeted by the greeter component)")
    }
}

export!(Greeter);
