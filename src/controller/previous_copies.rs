//! Copies made under a previous kind or name: when a spec change moves the
//! copies to another name (`target.name`, or the source's name it defaults
//! to) or kind, the ones made before are removed. `status.copies` records
//! what the copies were last made as, so this survives restarts.

use kube::Client;
use kube::api::{Api, ApiResource, DynamicObject, ListParams};
use kube::core::PartialObjectMeta;
use tracing::info;

use super::copy_index::CopyRecord;
use super::kinds::KindError;
use super::{Context, Error};
use crate::api::{CREATED_BY_VALUE, CopiesIdentity, LABEL_CREATED_BY, LABEL_PART_OF, Replika};
use crate::domain::copy::{Owner, Ownership};

/// What the copies of a pass are made as: `name`, of kind `resource`.
pub fn identity(resource: &ApiResource, name: &str) -> CopiesIdentity {
    CopiesIdentity {
        api_version: resource.api_version.clone(),
        kind: resource.kind.clone(),
        name: name.to_string(),
    }
}

/// The copies' identity recorded before this pass, when it is not `current`.
pub fn superseded(replika: &Replika, current: &CopiesIdentity) -> Option<CopiesIdentity> {
    replika
        .status
        .as_ref()
        .and_then(|status| status.copies.clone())
        .filter(|previous| previous != current)
}

/// The copies `owner` made as `previous`, of kind `resource`.
pub async fn list(
    client: &Client,
    resource: &ApiResource,
    previous: &CopiesIdentity,
    owner: &Owner,
) -> Result<Vec<CopyRecord>, kube::Error> {
    let api = Api::<PartialObjectMeta<DynamicObject>>::all_with(client.clone(), resource);
    let params = ListParams::default()
        .fields(&format!("metadata.name={}", previous.name))
        .labels(&format!(
            "{LABEL_CREATED_BY}={CREATED_BY_VALUE},{LABEL_PART_OF}={}",
            owner.name
        ));
    Ok(api
        .list_metadata(&params)
        .await?
        .iter()
        .map(|object| CopyRecord::from_metadata(&object.metadata))
        .filter(|copy| copy.marks.ownership(owner) == Ownership::Ours)
        .collect())
}

/// Removes every copy `owner` made as `previous`; how many it removed. A kind
/// no longer served has none left to remove.
pub async fn remove(
    previous: &CopiesIdentity,
    owner: &Owner,
    ctx: &Context,
) -> Result<usize, Error> {
    let kind = match ctx.kinds.resolve(&previous.gvk()).await {
        Ok(kind) => kind,
        Err(KindError::NotServed(_)) => return Ok(0),
        Err(error) => return Err(error.into()),
    };
    let copies = list(&ctx.client, &kind.resource, previous, owner).await?;
    let writer = ctx.copy_writer(&kind.resource, &owner.uid);
    for copy in &copies {
        writer.delete(copy).await?;
    }
    info!(
        owner = %format!("{}/{}", owner.namespace, owner.name),
        kind = %previous.kind,
        name = %previous.name,
        removed = copies.len(),
        "removed the copies made under a previous name or kind"
    );
    Ok(copies.len())
}
