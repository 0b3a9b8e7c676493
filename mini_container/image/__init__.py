"""Stage 4: images.

An image is an ordered list of layers (directory trees, each holding only what it changes against the
layers below it) plus a configuration (the default command, environment and working directory). The
rootfs stage stacks the layers with overlayfs; nothing of an image is ever copied into a container.

- `reference`: image names as people type them, with Docker Hub's defaults filled in.
- `oci`: the documents of an image (index, manifest, config) and their media types, parsed and checked.
- `layer_stream`, `layer_paths`, `unpack`: a layer tarball applied safely, every path kept inside.
- `store`: blobs by digest, layers by ChainID, images by name; what the rootfs stage stacks.
- `registry_auth`, `registry`, `pull`: the distribution API, token auth, and a pull into the store.
- `bootstrap`: builds the embedded default images (busybox, Debian) as real multi-layer images.
"""
