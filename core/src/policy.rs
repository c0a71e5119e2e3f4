//! Waiting-queue policies.
