"""MediaPipe face-mesh topology: the landmark index sets the project uses, named once.

Every module that picks eyes, brows, lips or the face outline out of a 468-point mesh (tracking, alignment,
paste-back masks, the synthetic clip generator, edit discovery, expression optimisation) takes them from here.

Conventions
-----------
* **Left / right are the image's**: ``EYE_LEFT`` is the eye on the image's left, i.e. the subject's *right* eye
  (FFHQ's ``eye_left``). MediaPipe names them the other way: its ``FACEMESH_RIGHT_EYE`` is our ``EYE_LEFT``.
* **Rows** (``*_UPPER`` / ``*_LOWER`` lids and brow edges) run from the outer corner to the inner one, so the
  left eye's rows go left→right on screen and the right eye's right→left (the mesh is mirror-indexed). Lip rows
  run from the image's left to its right, corners excluded.
* **Loops** (``*_LOOP`` and ``FACE_OVAL``) are closed polygons: consecutive entries are mesh edges and the last
  one joins the first, so they can be filled as they are. ``FACE_OVAL`` starts at the forehead top (10) and runs
  clockwise on screen (towards the image's right first, down to the chin, up the image's left side). The eye,
  brow and lip loops start at their outer/left corner and go along the lower edge first (upper edge first for
  the brows); the direction does not matter for filling.
* **Sets** (``EYE_LEFT``, ``EYE_RIGHT``) are sorted tuples, for means and masks where order is irrelevant.
* Coordinates are not part of this module: landmarks are ``[..., 468, 2|3]`` arrays in pixel-index coordinates.
"""

from __future__ import annotations

NUM_LANDMARKS = 468  # the face mesh without the iris refinement

# ------------------------------------------------------------------------------------------------ eyes
EYE_LEFT_UPPER = (246, 161, 160, 159, 158, 157, 173)  # upper lid, outer → inner corner
EYE_LEFT_LOWER = (7, 163, 144, 145, 153, 154, 155)  # lower lid, outer → inner corner
EYE_LEFT_CORNERS = (33, 133)  # (outer, inner)
EYE_RIGHT_UPPER = (466, 388, 387, 386, 385, 384, 398)
EYE_RIGHT_LOWER = (249, 390, 373, 374, 380, 381, 382)
EYE_RIGHT_CORNERS = (263, 362)

EYE_LEFT_LOOP = (EYE_LEFT_CORNERS[0], *EYE_LEFT_LOWER, EYE_LEFT_CORNERS[1], *EYE_LEFT_UPPER[::-1])
EYE_RIGHT_LOOP = (EYE_RIGHT_CORNERS[0], *EYE_RIGHT_LOWER, EYE_RIGHT_CORNERS[1], *EYE_RIGHT_UPPER[::-1])
EYE_LEFT = tuple(sorted(EYE_LEFT_LOOP))  # the 16 contour points as a set (their mean is the eye centre)
EYE_RIGHT = tuple(sorted(EYE_RIGHT_LOOP))

# ----------------------------------------------------------------------------------------------- brows
BROW_LEFT_UPPER = (70, 63, 105, 66, 107)  # upper edge, outer → inner
BROW_LEFT_LOWER = (46, 53, 52, 65, 55)  # lower edge, outer → inner
BROW_RIGHT_UPPER = (300, 293, 334, 296, 336)
BROW_RIGHT_LOWER = (276, 283, 282, 295, 285)

BROW_LEFT_LOOP = (*BROW_LEFT_UPPER, *BROW_LEFT_LOWER[::-1])
BROW_RIGHT_LOOP = (*BROW_RIGHT_UPPER, *BROW_RIGHT_LOWER[::-1])

# ------------------------------------------------------------------------------------------------ lips
MOUTH_LEFT, MOUTH_RIGHT = 61, 291  # outer mouth corners (FFHQ's mouth_left / mouth_right)
MOUTH_CORNERS_OUTER = (MOUTH_LEFT, MOUTH_RIGHT)
MOUTH_CORNERS_INNER = (78, 308)
LIPS_UPPER_OUTER = (185, 40, 39, 37, 0, 267, 269, 270, 409)  # image left → right, corners excluded
LIPS_LOWER_OUTER = (146, 91, 181, 84, 17, 314, 405, 321, 375)
LIPS_UPPER_INNER = (191, 80, 81, 82, 13, 312, 311, 310, 415)
LIPS_LOWER_INNER = (95, 88, 178, 87, 14, 317, 402, 318, 324)
LIP_TOP, LIP_BOTTOM = 0, 17  # outer lip centres (upper, lower)

LIPS_OUTER_LOOP = (MOUTH_LEFT, *LIPS_LOWER_OUTER, MOUTH_RIGHT, *LIPS_UPPER_OUTER[::-1])  # the mouth outline
LIPS_INNER_LOOP = (MOUTH_CORNERS_INNER[0], *LIPS_LOWER_INNER, MOUTH_CORNERS_INNER[1], *LIPS_UPPER_INNER[::-1])

# ------------------------------------------------------------------------------------------- face outline
FACE_OVAL = (10, 338, 297, 332, 284, 251, 389, 356, 454, 323, 361, 288, 397, 365, 379, 378, 400, 377, 152, 148,
             176, 149, 150, 136, 172, 58, 132, 93, 234, 127, 162, 21, 54, 103, 67, 109)
FOREHEAD_TOP = 10  # FACE_OVAL[0]
CHIN = 152  # FACE_OVAL[18]
CHEEK_LEFT, CHEEK_RIGHT = 234, 454  # the widest points of the oval
JAW = FACE_OVAL[14:23]  # the oval around the chin: 379 … 152 … 150

# ------------------------------------------------------------------------------------------------ nose
NOSE_TIP = 1
NOSE_RIDGE = (168, 6, 197, 195, 5, 4, 1, 19, 94, 2)  # between the eyes → tip → under the nose


def rotate(loop: tuple[int, ...], start: int) -> tuple[int, ...]:
    """The same closed loop starting at landmark ``start`` (same direction)."""
    k = loop.index(start)
    return loop[k:] + loop[:k]
