// The Function App (Node.js 22) on Flex Consumption or Elastic Premium, with a system-assigned
// identity and every app setting that config/settings.ts reads (tests/infra checks the two agree).
param name string
param location string
param sku string
param storageAccountName string
param appInsightsConnectionString string
param iotHubName string
param iotHubEventsHubName string
param iotHubEventsEndpoint string
param iotHubConsumerGroup string
param serviceBusNamespaceName string
param communicationName string
param emailSenderAddress string
param acrLoginServer string
param localRegistryAddress string
param defaultDeadline string
param signingKeySecretUri string
param signingKeyId string
param deviceBatchSize int

@description('ACR token name and password for reading module images (leave empty for anonymous pull).')
param acrUsername string = ''
@secure()
param acrPassword string = ''

var isFlex = sku == 'FC1'

resource storage 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: storageAccountName
}

resource hub 'Microsoft.Devices/IotHubs@2023-06-30' existing = {
  name: iotHubName
}

resource communication 'Microsoft.Communication/communicationServices@2023-04-01' existing = {
  name: communicationName
}

resource plan 'Microsoft.Web/serverfarms@2024-04-01' = {
  name: '${name}-plan'
  location: location
  kind: isFlex ? 'functionapp' : 'elastic'
  sku: isFlex
    ? {
        tier: 'FlexConsumption'
        name: 'FC1'
      }
    : {
        tier: 'ElasticPremium'
        name: sku
      }
  properties: {
    reserved: true
  }
}

var storageConnection = 'DefaultEndpointsProtocol=https;AccountName=${storage.name};AccountKey=${storage.listKeys().keys[0].value};EndpointSuffix=${environment().suffixes.storage}'
var registryPolicy = 'registryReadWrite'
var eventsPolicy = 'service'

var appSettings = [
  { name: 'AzureWebJobsStorage', value: storageConnection }
  { name: 'APPLICATIONINSIGHTS_CONNECTION_STRING', value: appInsightsConnectionString }
  {
    name: 'IOTHUB_CONNECTION_STRING'
    value: 'HostName=${hub.properties.hostName};SharedAccessKeyName=${registryPolicy};SharedAccessKey=${filter(hub.listKeys().value, p => p.keyName == registryPolicy)[0].primaryKey}'
  }
  {
    name: 'IOTHUB_EVENTS_CONNECTION'
    value: 'Endpoint=${iotHubEventsEndpoint};SharedAccessKeyName=${eventsPolicy};SharedAccessKey=${filter(hub.listKeys().value, p => p.keyName == eventsPolicy)[0].primaryKey};EntityPath=${iotHubEventsHubName}'
  }
  { name: 'IOTHUB_EVENTS_HUB_NAME', value: iotHubEventsHubName }
  { name: 'IOTHUB_EVENTS_CONSUMER_GROUP', value: iotHubConsumerGroup }
  // Identity-based: the host reads the namespace and authenticates with the app's identity.
  {
    name: 'SERVICEBUS_CONNECTION__fullyQualifiedNamespace'
    value: '${serviceBusNamespaceName}.servicebus.windows.net'
  }
  { name: 'COMMUNICATION_SERVICES_ENDPOINT', value: 'https://${communication.properties.hostName}' }
  { name: 'COMMUNICATION_SERVICES_ACCESS_KEY', value: communication.listKeys().primaryKey }
  { name: 'EMAIL_SENDER_ADDRESS', value: emailSenderAddress }
  { name: 'ACR_URL', value: 'https://${acrLoginServer}' }
  { name: 'ACR_USERNAME', value: acrUsername }
  { name: 'ACR_PASSWORD', value: acrPassword }
  { name: 'LOCAL_REGISTRY_ADDRESS', value: localRegistryAddress }
  { name: 'DEFAULT_DEADLINE', value: defaultDeadline }
  { name: 'BUNDLE_SIGNING_KEY', value: '@Microsoft.KeyVault(SecretUri=${signingKeySecretUri})' }
  { name: 'BUNDLE_SIGNING_KEY_ID', value: signingKeyId }
  { name: 'MANIFESTS_CONTAINER', value: 'manifests' }
  { name: 'BUNDLES_CONTAINER', value: 'bundles' }
  { name: 'INDEXES_CONTAINER', value: 'indexes' }
  { name: 'OUTBOX_CONTAINER', value: 'outbox' }
  { name: 'DEVICE_BATCH_SIZE', value: string(deviceBatchSize) }
  { name: 'QUERY_PAGE_SIZE', value: '100' }
]

// Elastic Premium needs the runtime named in settings; Flex Consumption names it in functionAppConfig.
var runtimeSettings = isFlex
  ? []
  : [
      { name: 'FUNCTIONS_EXTENSION_VERSION', value: '~4' }
      { name: 'FUNCTIONS_WORKER_RUNTIME', value: 'node' }
      { name: 'WEBSITE_NODE_DEFAULT_VERSION', value: '~22' }
    ]

resource app 'Microsoft.Web/sites@2024-04-01' = {
  name: name
  location: location
  kind: 'functionapp,linux'
  identity: {
    type: 'SystemAssigned'
  }
  properties: {
    serverFarmId: plan.id
    httpsOnly: true
    functionAppConfig: isFlex
      ? {
          deployment: {
            storage: {
              type: 'blobContainer'
              value: '${storage.properties.primaryEndpoints.blob}app-package'
              authentication: {
                type: 'SystemAssignedIdentity'
              }
            }
          }
          scaleAndConcurrency: {
            maximumInstanceCount: 100
            // Building a first image's bundle (level 22, 64 MiB window, two compression workers)
            // peaks at about 2.2 GB (bench/RESULTS.md); 2048 MB instances would run out of memory.
            instanceMemoryMB: 4096
          }
          runtime: {
            name: 'node'
            version: '22'
          }
        }
      : null
    siteConfig: {
      linuxFxVersion: isFlex ? null : 'Node|22'
      minTlsVersion: '1.2'
      appSettings: concat(appSettings, runtimeSettings)
    }
  }
}

output name string = app.name
output url string = 'https://${app.properties.defaultHostName}'
output principalId string = app.identity.principalId
