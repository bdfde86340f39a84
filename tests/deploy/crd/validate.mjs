// Validate Prometheus operator custom resources (JSON array on stdin) with the validators that
// @kubernetes-models/prometheus-operator generates from the operator's published CRD schemas.
// Prints one line per object; exits 1 when any is invalid.
import fs from "node:fs";
import { ServiceMonitor } from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/ServiceMonitor";

const kinds = { "monitoring.coreos.com/v1/ServiceMonitor": ServiceMonitor };
let invalid = 0;
for (const doc of JSON.parse(fs.readFileSync(0, "utf8"))) {
  const key = `${doc.apiVersion}/${doc.kind}`;
  const Model = kinds[key];
  if (!Model) {
    console.log(`unknown ${key} ${doc.metadata.name}`);
    invalid++;
    continue;
  }
  try {
    new Model(doc).validate();
    console.log(`valid ${key} ${doc.metadata.name}`);
  } catch (err) {
    console.log(`invalid ${key} ${doc.metadata.name}: ${err.message}`);
    invalid++;
  }
}
process.exit(invalid ? 1 : 0);
