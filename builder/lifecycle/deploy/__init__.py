"""Deploy a built repository on Kubernetes or KServe: generate the objects, check them offline.

* :mod:`.options` — what a deployment asks for (validated); :mod:`.facts` — what the
  repository is (Triton version -> NGC tag, targets, GPU models, rollouts);
* :mod:`.command` — the container command line from ``ServerConfig.to_args()`` (the flags
  ``tritonfleet serve`` uses);
* :mod:`.k8s`, :mod:`.kserve`, :mod:`.monitoring` — the objects; :mod:`.bundle` — plan and
  write a kustomize folder, all or nothing;
* :mod:`.check` — offline validation (kubernetes-validate, KServe's schema, PromQL, references);
* :mod:`.runtime` — the generated command line on the bundled tritonserver.
"""
