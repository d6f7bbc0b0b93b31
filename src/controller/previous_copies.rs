//! Copies made under a previous kind or name: when a spec change moves the
//! copies to another name (`target.name`, or the source's name it defaults
//! to) or kind, the ones made before are removed. `status.copies` records
//! what the copies were last made as, so this survives restarts.

use kube::api::{Api, DynamicObject, ListParams};
use kube::core::{GroupVersionKind, PartialObjectMeta};
use tracing::info;

use super::copy_index::CopyRecord;
use super::kinds::{KindError, ServedKind};
use super::{Context, Error};
use crate::api::{CREATED_BY_VALUE, CopiesIdentity, LABEL_CREATED_BY, LABEL_PART_OF, Replika};
use crate::domain::copy::{Owner, Ownership};

/// What the copies of a pass are made as.
pub fn identity(kind: &ServedKind, name: &str) -> CopiesIdentity {
    CopiesIdentity {
        api_version: kind.resource.api_version.clone(),
        kind: kind.resource.kind.clone(),
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

/// Removes every copy `owner` made as `previous`; how many it removed. A kind
/// no longer served has none left to remove.
pub async fn remove(
    previous: &CopiesIdentity,
    owner: &Owner,
    ctx: &Context,
) -> Result<usize, Error> {
    let (group, version) = match previous.api_version.split_once('/') {
        Some((group, version)) => (group, version),
        None => ("", previous.api_version.as_str()),
    };
    let gvk = GroupVersionKind::gvk(group, version, &previous.kind);
    let kind = match ctx.kinds.resolve(&gvk).await {
        Ok(kind) => kind,
        Err(KindError::NotServed(_)) => return Ok(0),
        Err(error) => return Err(error.into()),
    };
    let api = Api::<PartialObjectMeta<DynamicObject>>::all_with(ctx.client.clone(), &kind.resource);
    let params = ListParams::default()
        .fields(&format!("metadata.name={}", previous.name))
        .labels(&format!(
            "{LABEL_CREATED_BY}={CREATED_BY_VALUE},{LABEL_PART_OF}={}",
            owner.name
        ));
    let writer = ctx.copy_writer(&kind.resource, &owner.uid);
    let mut removed = 0;
    for object in api.list_metadata(&params).await? {
        let copy = CopyRecord::from_metadata(&object.metadata);
        if copy.marks.ownership(owner) == Ownership::Ours {
            writer.delete(&copy).await?;
            removed += 1;
        }
    }
    info!(
        owner = %format!("{}/{}", owner.namespace, owner.name),
        kind = %previous.kind,
        name = %previous.name,
        removed,
        "removed the copies made under a previous name or kind"
    );
    Ok(removed)
}
