"""The smartgrid stack: data, runtime, API, jobs and monitoring, composed."""

from __future__ import annotations

from typing import Any

import aws_cdk as cdk
from constructs import Construct

from smartgrid.catalog import ALARM_PREFIX_OUTPUT, API_URL_OUTPUT, JOBS, OPS_SETTINGS, stack_output_key
from smartgrid.config import env_var

from .constructs.api import STAGE, Api
from .constructs.data import Data
from .constructs.jobs import Jobs
from .constructs.monitoring import Alarms, Dashboard, Topics
from .constructs.notifications import Notifications
from .constructs.runtime import Runtime
from .settings import DeploySettings


class SmartgridStack(cdk.Stack):
    def __init__(self, scope: Construct, id: str, *, settings: DeploySettings, **kwargs: Any) -> None:
        super().__init__(scope, id, description=f"smartgrid load forecasting ({settings.env_name})", **kwargs)
        cdk.Tags.of(self).add("service", "smartgrid")
        cdk.Tags.of(self).add("environment", settings.env_name)
        self.settings = settings
        self.data = Data(self, "Data", settings=settings)
        self.runtime = Runtime(self, "Runtime", settings=settings, data=self.data)
        self.topics = Topics(self, "Topics", settings=settings)
        self.api = Api(self, "Api", settings=settings, runtime=self.runtime, data=self.data)
        self.jobs = Jobs(
            self,
            "Jobs",
            runtime=self.runtime,
            data=self.data,
            topics=dict(self.topics.topics),
            api_url=self.api.rest_api.url,
        )
        self.notifications = Notifications(
            self,
            "Notifications",
            settings=settings,
            runtime=self.runtime,
            data=self.data,
            alarm_topic=self.topics.alarm_topic,
            topics=dict(self.topics.topics),
        )
        placeholders = {
            "<api>": settings.prefix,
            "<stage>": STAGE,
            "<api_function>": self.api.function.function_name,
            "<dlq>": self.runtime.dead_letters.queue_name,
            "<notifier_dlq>": self.notifications.dead_letters.queue_name,
            **{f"<{job.name}_function>": self.jobs.functions[job.name].function_name for job in JOBS},
        }
        self.alarms = Alarms(
            self,
            "Alarms",
            settings=settings,
            topics=dict(self.topics.topics),
            alarm_topic=self.topics.alarm_topic,
            placeholders=placeholders,
        )
        self.dashboard = Dashboard(self, "Dashboard", settings=settings, alarms=self.alarms)

        # What `smartgrid ops check --stack <name>` reads: the deployed names of what Settings
        # points at, the API's URL and the alarms' prefix.
        deployed = {
            **{setting: table.table_name for setting, table in self.data.tables.items()},
            "models_bucket": self.data.models.bucket_name,
            "backups_bucket": self.data.backups.bucket_name,
            "meter_data_bucket": self.data.meter_data.bucket_name,
        }
        for setting in OPS_SETTINGS:
            cdk.CfnOutput(self, stack_output_key(setting), value=deployed[setting], description=env_var(setting))
        cdk.CfnOutput(self, API_URL_OUTPUT, value=self.api.rest_api.url, description="The API's base URL")
        cdk.CfnOutput(self, ALARM_PREFIX_OUTPUT, value=settings.prefix, description="Prefix of the alarms' names")
