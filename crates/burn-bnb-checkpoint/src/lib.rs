//! Placeholder: being built (see the issues).
