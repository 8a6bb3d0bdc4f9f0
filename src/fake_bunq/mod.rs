//! Placeholder: the bunq stand-in lands here.
