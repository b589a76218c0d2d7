//! The external HTTP authorizer with an answer cache. (Being written.)
