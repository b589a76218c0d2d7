//! The SigV4 authorizer: AWS Signature Version 4 signed requests. (Being written.)
