//! The runtimes for backends on other hosts: Baton's agent script run through a [`Shell`].
//!
//! Placeholder: written in the hosts work (issue 12).
