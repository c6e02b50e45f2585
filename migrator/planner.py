"""Planner: both folder trees -> a Plan. Read-only on both servers.

Rules, in order (the first that applies decides the destination name):
1. special-use: a source folder with an RFC 6154 attribute (\\Sent, \\Drafts ...)
   goes to the destination folder with the same attribute, if there is one.
2. same-name: otherwise the same path components; the destination store adds its
   own separator and namespace prefix. A component holding the destination's
   separator gets naming.SEPARATOR_SUBSTITUTE, with a warning.
\\Noselect source folders are not planned: they hold no mail, and creating a
child on the destination creates its parents.
"""

from __future__ import annotations

from migrator.naming import Folder, display, needs_substitute
from migrator.plan import COPY, FolderPlan, Plan
from migrator.stores.base import FolderInfo, Store


def plan_folders(src: Store, dst: Store, plan: Plan) -> Plan:
    src_folders = [f for f in src.list_folders() if f.selectable]
    dst_folders = dst.list_folders()
    dst_special = {f.special_use: f.name for f in dst_folders if f.special_use}
    dst_sep = getattr(dst, "separator", None)
    for info in src_folders:
        destination, rule = _destination(info, dst_special)
        if needs_substitute(destination, dst_sep):
            plan.warnings.append(
                f"folder '{display(info.name)}' contains the destination separator '{dst_sep}'; "
                f"it is written with '_' instead"
            )
        st = src.status(info.name)
        plan.folders.append(
            FolderPlan(
                source=info.name,
                destination=destination,
                action=COPY,
                rule=rule,
                special_use=info.special_use,
                messages=st.messages,
                size=st.size,
                uidvalidity=st.uidvalidity,
                subscribed=info.subscribed,
            )
        )
    return plan


def _destination(info: FolderInfo, dst_special: dict[str, Folder]) -> tuple[Folder, str]:
    if info.special_use and info.special_use in dst_special:
        return dst_special[info.special_use], "special-use"
    return info.name, "same-name"
