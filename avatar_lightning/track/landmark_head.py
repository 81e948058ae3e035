"""The head model restricted to the vertices its landmarks sit on: exact, and ~10x faster to fit.

Fitting touches only the corners of the embedded triangles (a few hundred of FLAME's 5023
vertices), but FLAME's joints are regressed from *all* vertices. Both blendshapes are linear, so
the joints are too: ``J = J_regressor · (T + S·β + E·ψ) = J_T + J_S·β + J_E·ψ`` with the three
right-hand terms precomputed. The rest (pose correctives, kinematic chain, skinning) is FLAME's LBS
(``head.lbs``) on the subset. :meth:`LandmarkHead.forward` equals ``embedding.points(head(...).vertices)``
(tests check it against the full model).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from avatar_lightning.head.lbs import apply_transforms, axis_angle_to_matrix, rigid_transforms
from avatar_lightning.track.embedding import LandmarkEmbedding


class LandmarkHead(nn.Module):
    """Posed landmark positions of a FLAME-format head (no global translation; rotations axis-angle).

    Args:
        head: the :class:`~avatar_lightning.head.HeadModel`.
        emb: the landmark embedding on it (L landmarks).
    """

    def __init__(self, head, emb: LandmarkEmbedding) -> None:
        super().__init__()
        corners = head.faces[emb.face_idx]  # [L, 3]
        used, local = torch.unique(corners, return_inverse=True)
        V, U = head.num_vertices, len(used)
        J = head.J_regressor
        self.parents = head.parents
        self.n_shape, self.n_expr = head.n_shape, head.n_expr
        self.register_buffer("corners", local)  # [L, 3] indices into the subset
        self.register_buffer("bary", emb.bary.clone())  # [L, 3]
        self.register_buffer("template", head.v_template[used].clone())  # [U, 3]
        self.register_buffer("shapedirs", head.shapedirs[used].clone())  # [U, 3, S]
        self.register_buffer("exprdirs", head.exprdirs[used].clone())  # [U, 3, E]
        posedirs = head.posedirs.reshape(-1, V, 3)[:, used]  # [P, U, 3]
        self.register_buffer("posedirs", posedirs.reshape(posedirs.shape[0], U * 3).clone())
        self.register_buffer("weights", head.lbs_weights[used].clone())  # [U, J]
        self.register_buffer("J_template", J @ head.v_template)  # [J, 3]
        self.register_buffer("J_shapedirs", torch.einsum("jv,vcs->jcs", J, head.shapedirs))  # [J, 3, S]
        self.register_buffer("J_exprdirs", torch.einsum("jv,vce->jce", J, head.exprdirs))  # [J, 3, E]

    def forward(self, shape: Tensor, expr: Tensor, pose: Tensor) -> Tensor:
        """Landmarks of the posed head.

        Args:
            shape: Tensor  # [B, S]
            expr: Tensor  # [B, E]
            pose: Tensor  # [B, J, 3] axis-angle (global, neck, jaw, left eye, right eye for FLAME).

        Returns:
            Tensor  # [B, L, 3] in the head's world frame (metres for FLAME).
        """
        B = shape.shape[0]
        v = (self.template + torch.einsum("ucs,bs->buc", self.shapedirs, shape)
             + torch.einsum("uce,be->buc", self.exprdirs, expr))
        joints = (self.J_template + torch.einsum("jcs,bs->bjc", self.J_shapedirs, shape)
                  + torch.einsum("jce,be->bjc", self.J_exprdirs, expr))
        rot = axis_angle_to_matrix(pose)  # [B, J, 3, 3]
        eye = torch.eye(3, dtype=rot.dtype, device=rot.device)
        v = v + ((rot[:, 1:] - eye).reshape(B, -1) @ self.posedirs).reshape(B, -1, 3)
        _, A = rigid_transforms(rot, joints, self.parents)
        T = (self.weights @ A.reshape(B, -1, 16)).reshape(B, -1, 4, 4)
        verts = apply_transforms(T, v)  # [B, U, 3]
        return (verts[:, self.corners] * self.bary[None, :, :, None]).sum(2)
