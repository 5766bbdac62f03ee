//! Storage of tokens: records, and the hash index of active ones.

use redb::{ReadableTable, ReadableTableMetadata};
use uuid::Uuid;

use super::codec::{decode, encode};
use super::engine::{StoreResult, Tables, WriteCtx};
use super::tables::*;
use crate::auth::model::TokenRecord;

pub trait TokenReads {
    fn get_token(&self, id: Uuid) -> StoreResult<Option<TokenRecord>>;

    fn all_tokens(&self) -> StoreResult<Vec<TokenRecord>>;

    fn any_token(&self) -> StoreResult<bool>;
}

pub trait TokenWrites: TokenReads {
    fn put_token(&mut self, token: &TokenRecord) -> StoreResult<()>;
}

impl<T: Tables> TokenReads for T {
    fn get_token(&self, id: Uuid) -> StoreResult<Option<TokenRecord>> {
        let t = self.table(TOKENS)?;
        let v = t.get(id.as_u128())?;
        v.map(|v| decode(v.value())).transpose()
    }

    fn all_tokens(&self) -> StoreResult<Vec<TokenRecord>> {
        let t = self.table(TOKENS)?;
        let mut out = Vec::new();
        for entry in t.iter()? {
            out.push(decode(entry?.1.value())?);
        }
        Ok(out)
    }

    fn any_token(&self) -> StoreResult<bool> {
        Ok(!self.table(TOKENS)?.is_empty()?)
    }
}

impl TokenWrites for WriteCtx<'_> {
    fn put_token(&mut self, token: &TokenRecord) -> StoreResult<()> {
        let bytes = encode(token)?;
        self.open_mut(TOKENS)?
            .insert(token.id.as_u128(), bytes.as_slice())?;
        let mut hashes = self.open_mut(TOKEN_HASHES)?;
        if token.revoked_at.is_none() {
            hashes.insert(token.hash.as_slice(), token.id.as_u128())?;
        } else {
            hashes.remove(token.hash.as_slice())?;
        }
        Ok(())
    }
}
