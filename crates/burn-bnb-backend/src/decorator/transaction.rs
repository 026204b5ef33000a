//! [`TransactionOps`] of burn-backend 0.20.1, forwarded from `Bnb<B>` to `B`.

use burn_backend::{
    Backend, ExecutionError,
    ops::{TransactionOps, TransactionPrimitive, TransactionPrimitiveData},
};

use super::Bnb;

forward_ops! {
    impl TransactionOps;
    forward {
    }
    manual {
        fn tr_execute(
            transaction: TransactionPrimitive<Self>,
        ) -> impl Future<Output = Result<TransactionPrimitiveData, ExecutionError>> + Send {
            // The read order lives in a private field that the caller has already taken out,
            // so rebuilding the transaction from its four lists loses nothing.
            B::tr_execute(TransactionPrimitive::new(
                transaction.read_floats,
                transaction.read_qfloats,
                transaction.read_ints,
                transaction.read_bools,
            ))
        }
    }
}
