// Deltaship: everything an operator needs in one resource group.
// Deploy with: az deployment group create -g <rg> -f bicep/main.bicep -p bicep/main.bicepparam
targetScope = 'resourceGroup'

@description('Short lowercase prefix for every resource name (3-11 letters or digits).')
@minLength(3)
@maxLength(11)
param namePrefix string

@description('Azure region of every resource.')
param location string = resourceGroup().location

@description('Storage account SKU: the task hub, tables and bundles live here.')
@allowed(['Standard_LRS', 'Standard_ZRS', 'Standard_GRS'])
param storageSku string = 'Standard_LRS'

@description('IoT Hub SKU and units. S1 is the smallest tier with cloud-to-device configuration content.')
@allowed(['S1', 'S2', 'S3'])
param iotHubSku string = 'S1'
param iotHubUnits int = 1

@description('Container Registry SKU for module images.')
@allowed(['Basic', 'Standard', 'Premium'])
param acrSku string = 'Standard'

@description('Function App hosting: Flex Consumption (FC1) or Elastic Premium (EP1..EP3).')
@allowed(['FC1', 'EP1', 'EP2', 'EP3'])
param functionSku string = 'FC1'

@description('Where Communication Services stores email data.')
param emailDataLocation string = 'Europe'

@description('Local part of the sender address of deployment emails.')
param emailSenderUsername string = 'DoNotReply'

@description('Address of the device-local registry that pushed manifests pull from.')
param localRegistryAddress string = 'localhost:5000'

@description('How long a deployment set waits for device reports when the request names none (ISO 8601).')
param defaultDeadline string = 'P14D'

@description('Key Vault secret URI of the Ed25519 bundle signing key (PKCS#8 PEM); the Function App reads it by reference.')
param signingKeySecretUri string

@description('Key id written into every bundle signature (see deltaship keygen).')
param signingKeyId string

@description('Devices per waiting sub-orchestration.')
param deviceBatchSize int = 100

var suffix = uniqueString(resourceGroup().id, namePrefix)

module monitoring 'modules/monitoring.bicep' = {
  name: 'monitoring'
  params: {
    name: '${namePrefix}-${suffix}'
    location: location
  }
}

module storage 'modules/storage.bicep' = {
  name: 'storage'
  params: {
    name: take(toLower('${namePrefix}${suffix}'), 24)
    location: location
    sku: storageSku
  }
}

module serviceBus 'modules/servicebus.bicep' = {
  name: 'serviceBus'
  params: {
    name: '${namePrefix}-sb-${suffix}'
    location: location
  }
}

module iotHub 'modules/iothub.bicep' = {
  name: 'iotHub'
  params: {
    name: '${namePrefix}-hub-${suffix}'
    location: location
    sku: iotHubSku
    units: iotHubUnits
  }
}

module registry 'modules/registry.bicep' = {
  name: 'registry'
  params: {
    name: take(toLower('${namePrefix}acr${suffix}'), 50)
    location: location
    sku: acrSku
  }
}

module communication 'modules/communication.bicep' = {
  name: 'communication'
  params: {
    name: '${namePrefix}-acs-${suffix}'
    dataLocation: emailDataLocation
    senderUsername: emailSenderUsername
  }
}

module functionApp 'modules/functionapp.bicep' = {
  name: 'functionApp'
  params: {
    name: '${namePrefix}-func-${suffix}'
    location: location
    sku: functionSku
    storageAccountName: storage.outputs.name
    appInsightsConnectionString: monitoring.outputs.connectionString
    iotHubName: iotHub.outputs.name
    iotHubEventsHubName: iotHub.outputs.eventHubName
    iotHubEventsEndpoint: iotHub.outputs.eventHubEndpoint
    iotHubConsumerGroup: iotHub.outputs.reportsConsumerGroup
    serviceBusNamespaceName: serviceBus.outputs.name
    communicationName: communication.outputs.name
    emailSenderAddress: communication.outputs.senderAddress
    acrLoginServer: registry.outputs.loginServer
    localRegistryAddress: localRegistryAddress
    defaultDeadline: defaultDeadline
    signingKeySecretUri: signingKeySecretUri
    signingKeyId: signingKeyId
    deviceBatchSize: deviceBatchSize
  }
}

module roles 'modules/roles.bicep' = {
  name: 'roles'
  params: {
    principalId: functionApp.outputs.principalId
    storageAccountName: storage.outputs.name
    serviceBusNamespaceName: serviceBus.outputs.name
    iotHubName: iotHub.outputs.name
    registryName: registry.outputs.name
  }
}

output functionAppName string = functionApp.outputs.name
output functionAppUrl string = functionApp.outputs.url
output storageAccountName string = storage.outputs.name
output iotHubName string = iotHub.outputs.name
output acrLoginServer string = registry.outputs.loginServer
output serviceBusNamespace string = serviceBus.outputs.name
output deploymentRequestsQueue string = serviceBus.outputs.queueName
output emailSenderAddress string = communication.outputs.senderAddress
output functionPrincipalId string = functionApp.outputs.principalId
