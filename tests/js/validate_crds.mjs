// Checks custom resources (KEDA's ScaledObject, the Prometheus Operator's ServiceMonitor)
// against the schemas their projects publish, as packaged by kubernetes-models. Reads a
// JSON array of objects on stdin; prints one JSON line per object with its errors; exits
// 1 when any object is invalid or of a kind it has no schema for.
import { ScaledObject } from "@kubernetes-models/keda/keda.sh/v1alpha1/ScaledObject";
import { TriggerAuthentication } from "@kubernetes-models/keda/keda.sh/v1alpha1/TriggerAuthentication";
import { ServiceMonitor } from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/ServiceMonitor";
import { PodMonitor } from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/PodMonitor";

const models = new Map(
  [ScaledObject, TriggerAuthentication, ServiceMonitor, PodMonitor].map((model) => [
    `${model.apiVersion}/${model.kind}`,
    model,
  ]),
);

let input = "";
for await (const chunk of process.stdin) input += chunk;

let invalid = 0;
for (const object of JSON.parse(input)) {
  const key = `${object.apiVersion}/${object.kind}`;
  const model = models.get(key);
  let errors = [];
  if (!model) {
    errors = [`no published schema known for ${key}`];
  } else {
    try {
      new model(object).validate();
    } catch (error) {
      errors = [error.message];
    }
  }
  if (errors.length) invalid += 1;
  console.log(JSON.stringify({ kind: key, name: object.metadata?.name, errors }));
}
process.exit(invalid ? 1 : 0);
