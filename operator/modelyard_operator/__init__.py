"""The modelyard Kubernetes operator: `Model` resources -> Deployments, Services,
autoscalers and batch CronJobs, reconciled with kopf."""
