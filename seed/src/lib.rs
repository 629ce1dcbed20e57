//! The cloud-init config drive builder. Not yet built: see the config drive issue.
