"""Work on built repositories: deploy them (Kubernetes, KServe), promote, distil."""
