// Validates every Argo Rollouts and Istio object in the given YAML files against the CRD schemas
// that @kubernetes-models ships (offline). Other kinds are left to kubernetes-validate.
// Usage: node crds.mjs FILE...   exit 1 on the first invalid object.
import fs from "node:fs";
import yaml from "js-yaml";
import * as argo from "@kubernetes-models/argo-rollouts/argoproj.io/v1alpha1";
import * as istio from "@kubernetes-models/istio/networking.istio.io/v1beta1";

const models = {
  "argoproj.io/v1alpha1": argo,
  "networking.istio.io/v1beta1": istio,
};

let checked = 0;
for (const file of process.argv.slice(2)) {
  for (const doc of yaml.loadAll(fs.readFileSync(file, "utf8"))) {
    if (!doc || !models[doc.apiVersion]) continue;
    const Model = models[doc.apiVersion][doc.kind];
    if (!Model) {
      console.error(`${file}: no schema for ${doc.apiVersion} ${doc.kind}`);
      process.exit(1);
    }
    try {
      new Model(doc).validate();
    } catch (err) {
      console.error(`${file}: ${doc.kind} ${doc.metadata && doc.metadata.name} is invalid: ${err.message}`);
      process.exit(1);
    }
    checked += 1;
    console.log(`${file}: ${doc.kind} ${doc.metadata.name} valid`);
  }
}
if (checked === 0) {
  console.error("no Argo Rollouts or Istio objects found");
  process.exit(1);
}
