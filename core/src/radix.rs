//! Radix prefix cache.
