"""The library-level application layer, below the command line and ``camkit export``:
what to explain with (:mod:`~camkit.app.spec`), image input (:mod:`~camkit.app.images`),
label files and class names (:mod:`~camkit.app.labels`) and the bundled samples
(:mod:`~camkit.app.samples`)."""
from .images import check_image, collect_images, image_extensions, list_folder, load_image
from .labels import categories, class_indices, labels_of, read_class_names, read_labels
from .samples import sample_images, sample_labels
from .spec import DEFAULT_METHOD, DEFAULT_MODEL, Built, ExplainSpec, MethodSpec, ModelSpec, state_sha256

__all__ = [
    "ExplainSpec", "ModelSpec", "MethodSpec", "Built", "state_sha256", "DEFAULT_MODEL", "DEFAULT_METHOD",
    "load_image", "check_image", "collect_images", "list_folder", "image_extensions",
    "read_labels", "labels_of", "class_indices", "read_class_names", "categories",
    "sample_images", "sample_labels",
]
