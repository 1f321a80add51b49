"""Create the compose demo's AWS resources in the local moto endpoint, then exit.

An EC2 Auto Scaling group `prescale-demo` (launch template, mixed instances policy) for
`prescale actuate asg`, and an AWS Batch job queue `prescale-demo` over a spot and an on-demand
managed compute environment for `prescale actuate batch` / `prescale ingest batch`.
Names match compose/aws/aws.toml. Safe to run again (existing resources are kept).
"""

import os

import boto3

kw = dict(
    endpoint_url=os.environ.get("AWS_ENDPOINT_URL", "http://moto:5000"),
    region_name=os.environ.get("AWS_REGION", "us-east-1"),
)
ec2, asg, iam, batch = (boto3.client(s, **kw) for s in ("ec2", "autoscaling", "iam", "batch"))
subnet = ec2.describe_subnets()["Subnets"][0]["SubnetId"]
sg = ec2.describe_security_groups()["SecurityGroups"][0]["GroupId"]

if not asg.describe_auto_scaling_groups(AutoScalingGroupNames=["prescale-demo"])["AutoScalingGroups"]:
    ec2.create_launch_template(
        LaunchTemplateName="prescale-demo",
        LaunchTemplateData={"ImageId": "ami-12c6146b", "InstanceType": "m5.large"},
    )
    asg.create_auto_scaling_group(
        AutoScalingGroupName="prescale-demo",
        MinSize=0, MaxSize=0, DesiredCapacity=0, VPCZoneIdentifier=subnet,
        MixedInstancesPolicy={"LaunchTemplate": {
            "LaunchTemplateSpecification": {"LaunchTemplateName": "prescale-demo", "Version": "$Latest"},
            "Overrides": [{"InstanceType": "m5.large", "WeightedCapacity": "2"}],
        }},
    )

if not batch.describe_job_queues(jobQueues=["prescale-demo"])["jobQueues"]:
    role = iam.create_role(RoleName="prescale-demo-batch", AssumeRolePolicyDocument="{}")["Role"]["Arn"]
    profile = iam.create_instance_profile(InstanceProfileName="prescale-demo")["InstanceProfile"]["Arn"]
    arns = []
    for name, kind, strategy in (("prescale-demo-spot", "SPOT", "SPOT_PRICE_CAPACITY_OPTIMIZED"),
                                 ("prescale-demo-od", "EC2", "BEST_FIT_PROGRESSIVE")):
        arns.append(batch.create_compute_environment(
            computeEnvironmentName=name, type="MANAGED", state="ENABLED", serviceRole=role,
            computeResources={"type": kind, "allocationStrategy": strategy, "minvCpus": 0,
                              "desiredvCpus": 0, "maxvCpus": 256, "instanceTypes": ["m5.large"],
                              "subnets": [subnet], "securityGroupIds": [sg], "instanceRole": profile},
        )["computeEnvironmentArn"])
    batch.create_job_queue(
        jobQueueName="prescale-demo", state="ENABLED", priority=1,
        computeEnvironmentOrder=[{"order": 1, "computeEnvironment": arns[1]},
                                 {"order": 2, "computeEnvironment": arns[0]}],
    )
print("prescale demo resources ready")
