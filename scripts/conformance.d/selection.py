"""What of docker-py's integration suite the conformance run takes, and what it leaves out and why.

Only tests that need the internet (a registry pull), an image build (``POST /build``) or swarm are
left out: everything else must pass on Skiff wherever it passes on dockerd.
"""

from __future__ import annotations

API_VERSION = "1.41"  # dockerd 20.10's newest; both engines are asked the same version

FILES = [
    "tests/integration/api_container_test.py",
    "tests/integration/api_exec_test.py",
    "tests/integration/api_healthcheck_test.py",
    "tests/integration/api_image_test.py",
    "tests/integration/api_network_test.py",
    "tests/integration/api_volume_test.py",
    "tests/integration/context_api_test.py",
    "tests/integration/errors_test.py",
    "tests/integration/regression_test.py",
    "tests/integration/models_containers_test.py",
    "tests/integration/models_images_test.py",
    "tests/integration/models_networks_test.py",
    "tests/integration/models_nodes_test.py",
    "tests/integration/models_resources_test.py",
    "tests/integration/models_services_test.py",
    "tests/integration/models_swarm_test.py",
    "tests/integration/models_volumes_test.py",
]

_INTERNET = "pulls from Docker Hub (the run has no internet)"
_BUILD = "builds an image (POST /build)"
_SWARM = "needs swarm mode"

# node id (or prefix: a whole file or class) -> why it is left out
DESELECTED: dict[str, str] = {
    "tests/integration/models_nodes_test.py": _SWARM,
    "tests/integration/models_services_test.py": _SWARM,
    "tests/integration/models_swarm_test.py": _SWARM,
    "tests/integration/api_network_test.py::TestNetworks::test_create_network_attachable": _SWARM,
    "tests/integration/api_network_test.py::TestNetworks::test_create_network_ingress": _SWARM,
    "tests/integration/api_network_test.py::TestNetworks::test_create_inspect_network_with_scope": _SWARM,
    "tests/integration/regression_test.py::TestRegressions::test_443_handle_nonchunked_response_in_stream": _BUILD,
    "tests/integration/models_images_test.py::ImageCollectionTest::test_build": _BUILD,
    "tests/integration/models_images_test.py::ImageCollectionTest::test_build_with_error": _BUILD,
    "tests/integration/models_images_test.py::ImageCollectionTest::test_build_with_multiple_success": _BUILD,
    "tests/integration/models_images_test.py::ImageCollectionTest::test_build_with_success_build_output": _BUILD,
    "tests/integration/api_image_test.py::PullImageTest::test_pull": _INTERNET,
    "tests/integration/api_image_test.py::PullImageTest::test_pull_streaming": _INTERNET,
    "tests/integration/api_image_test.py::PullImageTest::test_pull_invalid_platform": _INTERNET,
    "tests/integration/api_image_test.py::ImportImageTest::test_get_load_image": _INTERNET,
    "tests/integration/api_image_test.py::PruneImagesTest::test_prune_images": _INTERNET,
    "tests/integration/api_image_test.py::InspectDistributionTest::test_inspect_distribution": _INTERNET,
    "tests/integration/models_images_test.py::ImageCollectionTest::test_list": _INTERNET,
    "tests/integration/models_images_test.py::ImageCollectionTest::test_list_with_repository": _INTERNET,
    "tests/integration/models_images_test.py::ImageCollectionTest::test_pull": _INTERNET,
    "tests/integration/models_images_test.py::ImageCollectionTest::test_pull_multiple": _INTERNET,
    "tests/integration/models_images_test.py::ImageCollectionTest::test_pull_with_sha": _INTERNET,
    "tests/integration/models_images_test.py::ImageCollectionTest::test_pull_with_tag": _INTERNET,
    "tests/integration/models_images_test.py::ImageTest::test_tag_and_remove": _INTERNET,
    # run() of a missing image pulls it; without the internet the pull fails with a 500, not a 404
    "tests/integration/models_containers_test.py::ContainerCollectionTest::test_run_with_image_that_does_not_exist":
        _INTERNET,
}

# The stand-in images: the busybox image of tests/support/busybox.py under every name the suite uses.
IMAGE_TAGS = ["busybox:latest", "busybox:buildroot-2014.02", "alpine:3.10", "alpine:latest", "hello-world:latest"]
